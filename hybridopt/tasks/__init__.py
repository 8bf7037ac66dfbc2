"""Tasks: each draws seeded batches and defines loss, fitness and chance level."""

from hybridopt.tasks import cue_association, locomotion, pattern_memory  # noqa: F401  (registers them)
from hybridopt.tasks.base import TASKS, Batch, Task, make_task

__all__ = ["TASKS", "Batch", "Task", "make_task"]
