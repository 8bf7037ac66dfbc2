"""A task that exists only for the tests: ``cue_association`` whose training waits while a file
exists, so that a test can hold a candidate mid-training for as long as it wants.

Loaded as a plugin (``HYBRIDOPT_PLUGINS=tests.held_task``), by the driver and every worker, it
takes the place of ``cue_association`` in the task registry.  ``HYBRIDOPT_TEST_HOLD`` names the
file: while it exists, a worker that asks for a training batch writes ``<file>.held`` (its pid)
and waits; once the test removes the file, training goes on exactly as ``cue_association``'s.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from hybridopt.tasks.base import Batch, register_task
from hybridopt.tasks.cue_association import CueAssociation
from hybridopt.tasks.registry import task_section

HOLD_ENV = "HYBRIDOPT_TEST_HOLD"


@register_task("cue_association", task_section("cue_association"))
class HeldCueAssociation(CueAssociation):
    """``cue_association``, held while the file ``HYBRIDOPT_TEST_HOLD`` names exists."""

    def batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        hold = os.environ.get(HOLD_ENV)
        if hold:
            held = Path(hold + ".held")
            while Path(hold).exists():
                if not held.exists():
                    held.write_text(str(os.getpid()))
                time.sleep(0.05)
        return super().batch(batch_size, generator)
