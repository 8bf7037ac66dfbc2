"""Tasks: each draws seeded batches and defines loss, fitness and chance level.

Importing this package loads no task implementation (nor torch): it registers the built-in
tasks' config sections; a task's module is imported when a task is first made
(:func:`make_task`).  The protocols and helpers of :mod:`hybridopt.tasks.base` are importable
from here too, loaded on first use.
"""

from __future__ import annotations

from typing import Any

from hybridopt.tasks import sections  # noqa: F401  (registers the built-in tasks)
from hybridopt.tasks.registry import TASKS, TaskSection, make_task, register_task, task_names

__all__ = [
    "EVAL_SEED_OFFSET",
    "TASKS",
    "TEST_SEED_OFFSET",
    "Batch",
    "Task",
    "TaskSection",
    "make_task",
    "register_task",
    "task_names",
]

_FROM_BASE = ("EVAL_SEED_OFFSET", "TEST_SEED_OFFSET", "Batch", "Task")


def __getattr__(name: str) -> Any:
    if name in _FROM_BASE:
        from hybridopt.tasks import base

        return getattr(base, name)
    raise AttributeError(f"module 'hybridopt.tasks' has no attribute {name!r}")
