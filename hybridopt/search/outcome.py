"""What a search records of its candidates, tells its progress display, and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = ["CandidateRecord", "FinishedCandidate", "SearchOutcome"]


@dataclass
class CandidateRecord:
    generation: int
    index: int
    unit: list[float]
    values: dict[str, Any]
    fitness: float
    status: str
    reason: Optional[str]
    run_id: str
    wall_time: float
    cpu_s: float = 0.0  # this candidate's own training
    budget_cpu_s: float = 0.0  # the training behind its state, inherited included
    rung: int = 0  # the rung where it stopped


@dataclass
class FinishedCandidate:
    """What the progress display is told when a candidate stops (at its last rung or failed)."""

    generation: int
    index: int
    genome: str
    fitness: Optional[float]
    status: str
    reason: Optional[str]
    rung: int
    cpu_s: float
    wall_s: float


@dataclass
class SearchOutcome:
    parent_run_id: str
    best_values: dict[str, Any]
    best_fitness: float
    records: list[CandidateRecord] = field(default_factory=list)
    best_history: list[float] = field(default_factory=list)
