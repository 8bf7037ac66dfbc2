"""The MLflow record of a search: one parent run, one child run per candidate, the driver its
only writer.

A child run is created when its candidate is dispatched (RUNNING while it trains, so its
duration is true and running candidates are visible), gets its curves rung by rung, and ends
FINISHED at the rung where it stopped (tag ``hybridopt.rung``, metric ``rung_fitness`` per rung)
or FAILED with the reason (tag ``hybridopt.failure``).  Tags name its place in the search
(``hybridopt.generation``, ``hybridopt.candidate``, ``hybridopt.genome``) and its lineage
(``hybridopt.inherited_from``, ``hybridopt.inherited``); metric ``budget_cpu_s`` is the training
behind its state, inherited included.  A finished candidate's trained state is its artifact
``state.pt``, what a child inherits (also after a resume).
"""

from __future__ import annotations

import io
import json
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch

from hybridopt.tracking import Tracker, final_metrics
from hybridopt.train import TrainResult, TrainState

__all__ = ["STATE_ARTIFACT", "ChildRun", "SearchRecord"]

STATE_ARTIFACT = "state.pt"
TERMINAL = ("FINISHED", "FAILED")


@dataclass
class ChildRun:
    """What the store holds of one finished (or failed) candidate."""

    run_id: str
    generation: int
    index: int
    unit: list[float]
    values: dict[str, Any]
    status: str
    reason: Optional[str]
    rung: int
    rung_fitness: list[float] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


class SearchRecord:
    """The parent run ``parent`` of a search in ``tracker``'s experiment, and its children."""

    def __init__(self, tracker: Tracker, parent: str):
        self.tracker, self.parent = tracker, parent

    # ------------------------------------------------------------------ children
    def open_child(
        self,
        name: str,
        generation: int,
        index: int,
        unit: list[float],
        values: dict[str, Any],
        params: dict[str, Any],
        inherited_from: Optional[str] = None,
        inherited: tuple[str, ...] = (),
    ) -> str:
        """A RUNNING child run for a candidate being dispatched."""
        tags = {
            "hybridopt.generation": str(generation),
            "hybridopt.candidate": str(index),
            "hybridopt.genome": json.dumps(values),
            "hybridopt.genome_unit": json.dumps(unit),
            "hybridopt.rung": "0",
        }
        if inherited_from is not None:  # lineage: whose trained state it started from, and what it kept
            tags["hybridopt.inherited_from"] = inherited_from
            tags["hybridopt.inherited"] = ",".join(inherited)
        return self.tracker.start_run(name[:250], "candidate", params=params, tags=tags, parent_run_id=self.parent)

    def log_rung(self, run_id: str, rung: int, result: TrainResult) -> None:
        """A rung's curves (steps going on from the state it started from) and its fitness."""
        self.tracker.log_history(run_id, result.history)
        if not result.failed:
            self.tracker.log_metrics(run_id, {"rung_fitness": result.fitness}, step=rung)
        self.tracker.set_tags(run_id, {"hybridopt.rung": str(rung)})

    def close_child(self, run_id: str, result: TrainResult, cpu_s: float, wall_s: float, keep_state: bool) -> None:
        """End a child at the rung where it stopped: final metrics, its state, its status."""
        budget = result.state.cpu_s if result.state is not None else cpu_s
        extra = {"budget_cpu_s": budget} if not result.failed else {}
        self.tracker.log_history(run_id, [(result.steps, final_metrics(result, wall_s, cpu_s, **extra))])
        if keep_state and result.state is not None and not result.failed:
            buf = io.BytesIO()
            torch.save(asdict(result.state), buf)
            self.tracker.log_artifact_bytes(run_id, STATE_ARTIFACT, buf.getvalue())
        self.tracker.end_run(run_id, result.status, result.reason)

    def trained_state(self, run_id: str) -> Optional[TrainState]:
        """A finished candidate's trained state, read back from its run (``None``: none kept)."""
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = self.tracker.client.download_artifacts(run_id, STATE_ARTIFACT, tmp)
                return TrainState(**torch.load(path, map_location="cpu", weights_only=True))
        except Exception:  # noqa: BLE001 - a failed run, or a search that kept no states
            return None

    def stored_children(self) -> list[ChildRun]:
        """The children already in the store (for a resume).  Runs a killed driver left RUNNING
        are deleted: their candidates are run again."""
        runs = self.tracker.client.search_runs(
            [self.tracker.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{self.parent}'", max_results=50000
        )
        out = []
        for run in runs:
            if run.info.status not in TERMINAL:
                self.tracker.client.delete_run(run.info.run_id)
                continue
            t = run.data.tags
            history = self.tracker.client.get_metric_history(run.info.run_id, "rung_fitness")
            out.append(
                ChildRun(
                    run_id=run.info.run_id,
                    generation=int(t["hybridopt.generation"]),
                    index=int(t["hybridopt.candidate"]),
                    unit=json.loads(t["hybridopt.genome_unit"]),
                    values=json.loads(t["hybridopt.genome"]),
                    status=run.info.status,
                    reason=t.get("hybridopt.failure"),
                    rung=int(t.get("hybridopt.rung", "0")),
                    rung_fitness=[m.value for m in sorted(history, key=lambda m: m.step)],
                    metrics=dict(run.data.metrics),
                )
            )
        return out

    def delete(self, run_id: str) -> None:
        self.tracker.client.delete_run(run_id)

    # ------------------------------------------------------------------ the parent
    def log_generation(self, generation: int, metrics: dict[str, float]) -> None:
        """A generation's metrics, once: a resume that redoes a generation does not log it twice."""
        logged = self.tracker.client.get_metric_history(self.parent, "best_fitness")
        if any(m.step == generation for m in logged):
            return
        self.tracker.log_metrics(self.parent, metrics, step=generation)
