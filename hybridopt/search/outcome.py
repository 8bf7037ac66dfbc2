"""What a search records of its candidates, tells its progress display, and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hybridopt.config import Config
from hybridopt.search.genome import GenomeSpace

__all__ = ["CandidateRecord", "FinishedCandidate", "SearchOutcome", "describe_search"]


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

    def line(self) -> str:
        """``g003 c005   0.7312  finished  rung 2    180 CPU-s   281 s  input=stdp/plain ...``"""
        fit = "failed" if self.fitness is None else f"{self.fitness:.4f}"
        why = f" ({self.reason})" if self.reason else ""
        return (
            f"g{self.generation:03d} c{self.index:03d}  {fit:>7}  {self.status.lower()}{why}  rung {self.rung}  "
            f"{self.cpu_s:5.0f} CPU-s {self.wall_s:5.0f} s  {self.genome}"
        )


@dataclass
class SearchOutcome:
    parent_run_id: str
    best_values: dict[str, Any]
    best_fitness: float
    records: list[CandidateRecord] = field(default_factory=list)
    best_history: list[float] = field(default_factory=list)


def describe_search(
    cfg: Config, space: GenomeSpace, command: Optional[str], best: Optional[CandidateRecord] = None
) -> str:
    """A search's description in MLflow (markdown): what it searches, its best so far, how to
    reproduce it."""
    sc = cfg.search
    assert sc is not None
    genes = ", ".join(f"`{g.path}`" for g in space.genes)
    text = (
        f"Search on **{cfg.task.name}**: {sc.population} candidates per generation, "
        f"{sc.generations} generations, inheritance {sc.inheritance}, rungs {list(sc.rungs)}"
        + (f", then the best trains on for {sc.final_budget:g}x a candidate's budget" if sc.final_budget else "")
        + ".\n\n"
        f"Genes: {genes}.\n\n"
    )
    if best is not None:
        text += f"**Best** (fitness {best.fitness:.4f}, run `{best.run_id}`): {GenomeSpace.describe(best.values)}\n\n"
    if command:
        text += f"Reproduce: `{command}`\n"
    return text
