"""evotorch, imported once and quietly: its import scripts helpers with ``torch.jit.script``
(deprecated in torch: a FutureWarning per helper) and announces every Problem's dtype and device
at INFO level.  The search's GA and the control tasks' ES both take evotorch from here."""

from __future__ import annotations

import logging
import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated", category=FutureWarning)
    from evotorch import Problem, SolutionBatch
    from evotorch.algorithms import PGPE, SNES, GeneticAlgorithm
    from evotorch.operators import CopyingOperator, GaussianMutation, OnePointCrossOver

logging.getLogger("evotorch").setLevel(logging.WARNING)  # after the import, which sets it to INFO

__all__ = [
    "PGPE",
    "SNES",
    "CopyingOperator",
    "GaussianMutation",
    "GeneticAlgorithm",
    "OnePointCrossOver",
    "Problem",
    "SolutionBatch",
]
