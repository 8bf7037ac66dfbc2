"""Tasks: each draws seeded batches and defines loss, fitness and chance level."""

from hybridopt.tasks import cue_association, locomotion, pattern_memory  # noqa: F401  (registers them)
from hybridopt.tasks.base import EVAL_SEED_OFFSET, TASKS, TEST_SEED_OFFSET, Batch, Task, make_task

__all__ = ["EVAL_SEED_OFFSET", "TASKS", "TEST_SEED_OFFSET", "Batch", "Task", "make_task"]
