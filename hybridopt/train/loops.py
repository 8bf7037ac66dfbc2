"""The inner loops, one per kind of task: how a config trains, what it starts from, how its
weights are rebuilt and evaluated, and which config section holds its budget.

- ``gradient``: tasks of the :class:`~hybridopt.tasks.base.Task` protocol (seeded batches, a
  differentiable loss) train by BPTT (:mod:`hybridopt.train.gradient`) under ``train``; the
  budget is ``train.steps``.
- ``control``: tasks played in a simulator that gives no gradient train by search gradient
  (:mod:`hybridopt.train.es`) under ``es``; the budget is ``es.generations``.

Each budget is cut short after its section's ``cpu_minutes``.  The sections of the other loops
do not apply to a config (a run does not log them).

This module is torch-free: the kind of a task is looked up by the type of its config section
(each task config declares its ``kind``), so the command line, tracking
and the search driver ask it without loading torch or a simulator; an entry imports its
implementation when it trains, builds or evaluates.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

from pydantic import BaseModel

from hybridopt.config import Config
from hybridopt.train.result import ProgressFn, TrainResult, TrainState

__all__ = [
    "CONTROL",
    "GRADIENT",
    "LOOPS",
    "Budget",
    "InnerLoop",
    "Loaded",
    "inner_loop",
    "task_kind",
]

GRADIENT = "gradient"
CONTROL = "control"


@dataclass(frozen=True)
class Budget:
    """Where a loop's budget lives: config section ``section``, its step count in the field
    ``steps`` and its CPU-minutes in ``cpu_minutes``."""

    section: str
    steps: str
    cpu_minutes: str = "cpu_minutes"

    def steps_of(self, cfg: Config) -> int:
        """Training steps (ES: generations) the config's budget allows."""
        return getattr(getattr(cfg, self.section), self.steps)

    def minutes_of(self, cfg: Config) -> Optional[float]:
        """CPU-minutes the config's budget allows (``None``: no limit)."""
        return getattr(getattr(cfg, self.section), self.cpu_minutes)

    def replace(self, cfg: Config, **values: Any) -> Config:
        """The config with its budget's ``steps`` and/or ``cpu_minutes`` set to ``values``."""
        fields = {"steps": self.steps, "cpu_minutes": self.cpu_minutes}
        section = getattr(cfg, self.section)
        update = {fields[k]: v for k, v in values.items()}
        return cfg.model_copy(update={self.section: section.model_copy(update=update)})


class Loaded(NamedTuple):
    """A trained network rebuilt from its weights: the task, the network and, for a policy, its
    observation normaliser."""

    task: Any
    net: Any
    normalizer: Any = None


class InnerLoop(ABC):
    """One kind of task's inner loop; :data:`LOOPS` holds one instance per kind."""

    kind: str
    budget: Budget

    @property
    def section(self) -> str:
        """The config section this loop trains under."""
        return self.budget.section

    @property
    def unused_sections(self) -> frozenset[str]:
        """The sections the other loops train under: they do not apply to this kind of task."""
        return frozenset(loop.section for loop in LOOPS.values()) - {self.section}

    def train(
        self,
        cfg: Config,
        progress: Optional[ProgressFn] = None,
        *,
        start: Optional[TrainState] = None,
        cpu_budget_s: Optional[float] = None,
    ) -> TrainResult:
        """Train one configuration, from ``start`` when given, for at most ``cpu_budget_s``
        further CPU seconds (default: the section's ``cpu_minutes``); never raises for a failure
        inside training (a ``FAILED`` result says why)."""
        return self.trainer()(cfg, progress, start=start, cpu_budget_s=cpu_budget_s)

    @abstractmethod
    def trainer(self) -> Callable[..., TrainResult]:
        """The loop's training function (imported on first use), called as :meth:`train` is."""

    @abstractmethod
    def initial_model(self, cfg: Config) -> dict[str, Any]:
        """The freshly initialised model state a config trains from: what
        :class:`TrainState` ``.model`` holds before any training."""

    @abstractmethod
    def load(self, cfg: Config, state_dict: dict[str, Any]) -> Loaded:
        """Rebuild the trained network; ``RuntimeError`` or ``KeyError`` when the weights do
        not fit the config."""

    @abstractmethod
    def evaluate(self, cfg: Config, loaded: Loaded) -> dict[str, float]:
        """Evaluate a rebuilt network the way training evaluated it (held-out episodes)."""


class GradientLoop(InnerLoop):
    """BPTT with Adam (:mod:`hybridopt.train.gradient`), under ``train``."""

    kind = GRADIENT
    budget = Budget("train", "steps")

    def trainer(self) -> Callable[..., TrainResult]:
        from hybridopt.train.gradient import train_gradient

        return train_gradient

    def initial_model(self, cfg: Config) -> dict[str, Any]:
        from hybridopt.train.gradient import build

        _, net = build(cfg)
        return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}

    def load(self, cfg: Config, state_dict: dict[str, Any]) -> Loaded:
        from hybridopt.train.gradient import build

        task, net = build(cfg)
        net.load_state_dict(state_dict)
        return Loaded(task, net)

    def evaluate(self, cfg: Config, loaded: Loaded) -> dict[str, float]:
        from hybridopt.train.gradient import evaluate

        return evaluate(loaded.net, loaded.task, cfg)


class ControlLoop(InnerLoop):
    """Search gradient over the flat parameters (:mod:`hybridopt.train.es`), under ``es``; the
    model state is a policy's, with its observation statistics."""

    kind = CONTROL
    budget = Budget("es", "generations")

    def trainer(self) -> Callable[..., TrainResult]:
        from hybridopt.train.es import train_es

        return train_es

    def initial_model(self, cfg: Config) -> dict[str, Any]:
        from hybridopt.tasks.base import ObsNormalizer
        from hybridopt.train.es import build_policy, policy_state_dict

        task, net = build_policy(cfg)
        return policy_state_dict(net, ObsNormalizer.identity(task.n_in))

    def load(self, cfg: Config, state_dict: dict[str, Any]) -> Loaded:
        from hybridopt.train.es import load_policy

        return Loaded(*load_policy(cfg, state_dict))

    def evaluate(self, cfg: Config, loaded: Loaded) -> dict[str, float]:
        """Every condition, trained on and held out (see :func:`~hybridopt.train.es.evaluate_policy`)."""
        from hybridopt.train.es import evaluate_policy

        return evaluate_policy(loaded.task, loaded.net, loaded.normalizer, cfg.seed)


LOOPS: dict[str, InnerLoop] = {loop.kind: loop for loop in (GradientLoop(), ControlLoop())}


def task_kind(task_cfg: BaseModel) -> str:
    """The kind of the task a config section describes (its ``kind``, a key of :data:`LOOPS`)."""
    kind = getattr(type(task_cfg), "kind", None)
    if kind not in LOOPS:
        raise ValueError(f"no inner loop for task config {type(task_cfg).__name__} (kind {kind!r})")
    return kind


def inner_loop(cfg: Config) -> InnerLoop:
    """The inner loop that trains a config's task."""
    return LOOPS[task_kind(cfg.task)]
