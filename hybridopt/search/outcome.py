"""Where a search stands (its candidates, the best so far), and what it returns."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

from hybridopt.config import Config
from hybridopt.search.genome import GenomeSpace
from hybridopt.stored_names import METRIC_BEST_FITNESS, METRIC_FINAL_FITNESS, CandidateRecord

__all__ = ["SearchOutcome", "Standings", "describe_search", "test_line"]


class Standings:
    """Every candidate a search has recorded, the best finished one with its weights, and the
    best fitness after each generation (what the parent run's metrics and the checkpoint say).

    ``ranked_from``: the first generation whose candidates may be the best.  Under a curriculum
    (``search.schedule``) an earlier generation measured its fitness on an easier task, which no
    later one can match: only candidates measured on the schedule's final values compete.
    """

    def __init__(
        self,
        records: Optional[list[CandidateRecord]] = None,
        best: Optional[tuple[CandidateRecord, dict[str, Any]]] = None,
        best_history: Optional[list[float]] = None,
        ranked_from: int = 0,
    ):
        self.records: list[CandidateRecord] = list(records or [])
        self.best = best  # (record, its weights' state_dict)
        self.best_history: list[float] = list(best_history or [])
        self.ranked_from = ranked_from

    @property
    def best_fitness(self) -> float:
        """The best fitness so far (NaN: none finished yet)."""
        if self.best is None:
            return float("nan")
        fitness = self.best[0].fitness
        assert fitness is not None, "only a finished candidate is the best"
        return fitness

    def add(self, record: CandidateRecord, weights: Callable[[], Optional[dict[str, Any]]]) -> None:
        """Record a candidate; one better than the best so far becomes the best, with its weights
        (``weights()``, only asked for then; ``None``: none kept, it cannot be the best)."""
        self.records.append(record)
        if record.fitness is None or record.status != "FINISHED" or record.generation < self.ranked_from:
            return
        if self.best is None or record.fitness > self.best_fitness:
            state_dict = weights()
            if state_dict is not None:
                self.best = (record, state_dict)

    def end_generation(self, generation: int, population_best: float) -> dict[str, float]:
        """Close a generation whose population's best fitness is ``population_best``: its metrics
        (those that are finite).  An elite that trained on may measure lower: the best so far stays."""
        ranked = generation > self.ranked_from and self.best_history
        best = max(population_best, self.best_history[-1]) if ranked else population_best
        self.best_history.append(best)
        this_gen = [r for r in self.records if r.generation == generation]
        finished = [r.fitness for r in this_gen if r.fitness is not None and r.status == "FINISHED"]
        metrics = {
            METRIC_BEST_FITNESS: best,
            "mean_fitness": sum(finished) / len(finished) if finished else float("nan"),
            "failed": float(sum(r.status != "FINISHED" for r in this_gen)),
            "cpu_s": self.cpu_s,  # training CPU spent so far, all candidates
            "candidates": float(len(self.records)),  # evaluated so far, every generation
            "candidates_in_generation": float(len(this_gen)),
        }
        return {k: v for k, v in metrics.items() if math.isfinite(v)}

    def final_metrics(self, final: CandidateRecord) -> dict[str, float]:
        """The metrics of the winner's further training, ``final`` (those that are finite)."""
        metrics = {METRIC_BEST_FITNESS: self.best_fitness, "cpu_s": self.cpu_s, "candidates": float(len(self.records))}
        if final.fitness is not None:
            metrics[METRIC_FINAL_FITNESS] = final.fitness
        return {k: v for k, v in metrics.items() if math.isfinite(v)}

    @property
    def cpu_s(self) -> float:
        """CPU seconds of training of every candidate recorded."""
        return float(sum(r.cpu_s for r in self.records))


def test_line(metrics: dict[str, float]) -> str:
    """A network's result in words: test accuracy on reserved episodes with its standard error,
    beside chance and the observer reading the same inputs ("" when it was not measured)."""
    if "test/accuracy" not in metrics:
        return ""
    line = f"test accuracy {metrics['test/accuracy']:.4f} ± {metrics.get('test/accuracy_se', math.nan):.4f}"
    line += f" on {metrics.get('test/episodes', 0):.0f} fresh episodes"
    if "test/chance" in metrics:
        line += f"; chance {metrics['test/chance']:.3f}"
    if "test/observer" in metrics:
        line += f", observer reading the same inputs {metrics['test/observer']:.3f}"
    return line


@dataclass
class SearchOutcome:
    """What a search returns: its parent run, the best genome and fitness, every candidate, the
    best fitness after each generation, and the winner's measures on reserved test episodes."""

    parent_run_id: str
    best_values: dict[str, Any]
    best_fitness: float
    records: list[CandidateRecord] = field(default_factory=list)
    best_history: list[float] = field(default_factory=list)
    test: dict[str, float] = field(default_factory=dict)  # the winner on reserved test episodes

    def result_line(self) -> str:
        """The search's result in words: test accuracy with its standard error, beside the
        selection figure, chance and the observer where they are known."""
        test = test_line(self.test)
        selection = f"selection fitness {self.best_fitness:.4f} (its own evaluation episodes)"
        return f"{test} ({selection})" if test else selection


def describe_search(
    cfg: Config, space: GenomeSpace, command: Optional[str], best: Optional[CandidateRecord] = None
) -> str:
    """A search's description in MLflow (markdown): what it searches, its best so far, how to
    reproduce it."""
    sc = cfg.search
    assert sc is not None
    genes = ", ".join(f"`{g.path}`" for g in space.genes)
    text = (
        f"Search on **{cfg.task.name}**: {sc.population} candidates per generation"
        + (f" (the first drawn from {sc.initial_population})" if (sc.initial_population or 0) > sc.population else "")
        + f", {sc.generations} generations, inheritance {sc.inheritance}, rungs {list(sc.rungs)}"
        + (f", then the best trains on for {sc.final_budget:g}x a candidate's budget" if sc.final_budget else "")
        + ".\n\n"
        f"Genes: {genes}.\n\n"
    )
    if best is not None:
        lineage = ", ".join(f"`{p}`" for p in best.lineage_genes)
        text += f"**Best** (fitness {best.fitness:.4f}, run `{best.run_id}`): {GenomeSpace.describe(best.genome)}\n\n"
        if lineage:
            text += f"Its {lineage}: the initial values its lineage started from (it inherited what they set).\n\n"
    if command:
        text += f"Reproduce: `{command}`\n"
    return text
