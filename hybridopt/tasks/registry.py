"""The task registry: each task by name, with its config section and the inner loop that trains it.

Torch-free: a config is validated against the registered sections before torch loads.  A task
is one class (it draws batches, scores a readout; see :class:`~hybridopt.tasks.base.Task`) and
one config section, a :class:`TaskSection` declared beside it; one call registers both::

    class MyTaskConfig(TaskSection):
        kind: ClassVar[str] = "gradient"        # the inner loop that trains it
        steps: int = 10

    @register_task("my_task", MyTaskConfig)
    class MyTask: ...

The config's ``task`` section, the task names a config may give, the genes a search may put on
task keys and the inner loop a run takes are all read from here.  A task of your own lives in
your own module, named in ``HYBRIDOPT_PLUGINS`` so that the command line, the search's driver
and every worker import it before they validate a config.  The built-in tasks register the
same way (:mod:`hybridopt.tasks.sections`), their classes named by ``"module:Class"`` so that
validation does not import them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Optional, TypeVar, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "TASKS",
    "Distinct",
    "Fraction",
    "Positive",
    "TaskEntry",
    "TaskSection",
    "make_task",
    "register_task",
    "task_class",
    "task_names",
    "task_section",
]

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Positive = Annotated[float, Field(gt=0.0)]
T = TypeVar("T")


def _distinct(v: list[T]) -> list[T]:
    if len(set(v)) != len(v):
        raise ValueError(f"has duplicates: {v}")
    return v


Distinct = Annotated[list[T], AfterValidator(_distinct)]  # a list that names each item once


class TaskSection(BaseModel):
    """A task's config section (``task:`` in a config): ``name`` picks the task, the other keys
    are the task's own (unknown keys are rejected).  ``kind`` names the inner loop that trains it:
    ``gradient`` (BPTT on the task's differentiable loss, under ``train``) or ``control`` (played
    in a simulator, search gradient under ``es``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ClassVar[str] = "gradient"
    name: str

    @model_validator(mode="after")
    def _registered_name(self) -> TaskSection:
        entry = TASKS.get(self.name)
        if entry is None or entry.section is not type(self):
            owner = [n for n, e in TASKS.items() if e.section is type(self)]
            raise ValueError(
                f"{type(self).__name__} is the section of task {owner or 'none registered'}, not {self.name!r}"
            )
        return self

    def input_positions(self) -> Optional[tuple[list[list[int]], list[int]]]:
        """Where the task shows one layout of input channels at several positions: each
        position's channels (in the same order at every position) and the channels every
        position shares; ``None`` (the default) where it has no such layout.  A network with
        ``share_positions`` runs one pool per position (see ``NetworkConfig``)."""
        return None


@dataclass(frozen=True)
class TaskEntry:
    """A registered task: its name, config section and class (or ``"module:Class"``, imported on
    first use)."""

    name: str
    section: type[TaskSection]
    implementation: Union[type, str]

    @property
    def kind(self) -> str:
        """The inner loop that trains it (its section's ``kind``)."""
        return self.section.kind


TASKS: dict[str, TaskEntry] = {}


def _add(name: str, section: type[TaskSection], implementation: Union[type, str]) -> None:
    if not isinstance(section, type) or not issubclass(section, TaskSection):
        raise TypeError(f"task {name!r}: its config section must subclass TaskSection, got {section!r}")
    have = TASKS.get(name)
    if have is not None and have.section is not section:
        raise ValueError(f"task {name!r} is registered already (section {have.section.__name__})")
    TASKS[name] = TaskEntry(name, section, implementation)


def register_task(
    name: str, section: type[TaskSection], implementation: Optional[Union[type, str]] = None
) -> Callable[[type], type]:
    """Register a task under ``name`` with its config section.  As a class decorator,
    ``@register_task("my_task", MyTaskConfig)``; or with the task's class given, as a
    class or as ``"package.module:Class"`` (imported when a task is first made).  Registering a
    name again with the same section replaces its class; with another section is an error."""
    if implementation is not None:
        _add(name, section, implementation)

    def deco(cls: type) -> type:
        _add(name, section, cls)
        return cls

    return deco


def task_names() -> list[str]:
    """The registered task names, sorted."""
    return sorted(TASKS)


def task_section(name: Any) -> type[TaskSection]:
    """The config section of the task ``name``; ``LookupError`` naming the known ones otherwise."""
    entry = TASKS.get(name) if isinstance(name, str) else None
    if entry is None:
        raise LookupError(
            f"unknown task {name!r}; known: {', '.join(task_names())} "
            "(a task of your own is registered by its module, named in HYBRIDOPT_PLUGINS)"
        )
    return entry.section


def task_class(name: str) -> type:
    """The class of the task ``name`` (importing its module on first use)."""
    task_section(name)
    entry = TASKS[name]
    impl = entry.implementation
    if isinstance(impl, str):
        module, _, attr = impl.partition(":")
        impl = getattr(importlib.import_module(module), attr)
        TASKS[name] = TaskEntry(name, entry.section, impl)
    return impl


def make_task(cfg: Any) -> Any:
    """Build the task a config section describes (``cfg.name`` picks it)."""
    try:
        cls = task_class(cfg.name)
    except LookupError as e:
        raise ValueError(str(e)) from None
    return cls(cfg)
