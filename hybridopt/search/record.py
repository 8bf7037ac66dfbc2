"""The MLflow record of a search: one parent run, one child run per candidate, the driver its
only writer.

The parent run's life: :meth:`SearchRecord.start` creates it (config as params and artifact,
the command that started it), :meth:`SearchRecord.resume` finds it again for ``--resume``,
:meth:`SearchRecord.finish` logs the winner (genome, config, weights) and ends it, and
:meth:`SearchRecord.abandon` ends it early with the children under way.

A child run is created when a worker takes its candidate, not while the candidate is queued
(RUNNING while it trains, so its duration is true and the candidates training are the RUNNING
ones), gets its curves rung by rung, and ends FINISHED at the rung where it stopped or FAILED
with the reason; ``queue_wait_s`` says how long it waited for workers.  Its tags and metrics are those
of :mod:`hybridopt.stored_names`; a finished candidate's trained state is its artifact
``state.pt``, what a child inherits (also after a resume).
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, Optional

import torch
import yaml

from hybridopt.config import Config
from hybridopt.errors import CheckpointError
from hybridopt.search.genome import GenomeSpace
from hybridopt.stored_names import (
    ARTIFACT_BEST_CONFIG,
    ARTIFACT_BEST_GENOME,
    ARTIFACT_CONFIG,
    ARTIFACT_STATE,
    ARTIFACT_WEIGHTS,
    KIND_CANDIDATE,
    KIND_SEARCH,
    METRIC_BEST_FITNESS,
    METRIC_BUDGET_CPU_S,
    METRIC_FITNESS,
    METRIC_QUEUE_WAIT_S,
    METRIC_RUNG_FITNESS,
    TAG_BEST_GENOME,
    TAG_BEST_RUN,
    TAG_COMMAND,
    CandidateRecord,
    candidate_tags,
    decode_candidate,
    rung_tag,
)
from hybridopt.tracking import Tracker, describe, final_metrics, run_params
from hybridopt.train import TrainResult, TrainState
from hybridopt.train.weights import weights_bytes

__all__ = ["SearchRecord"]

TERMINAL = ("FINISHED", "FAILED")


class SearchRecord:
    """The parent run ``parent`` of a search in ``tracker``'s experiment, and its children.

    ``command`` is the command line that started the search (kept on the parent run);
    ``open_runs`` the child runs of the candidates under way."""

    def __init__(self, tracker: Tracker, parent: str, command: Optional[str] = None):
        self.tracker, self.parent, self.command = tracker, parent, command
        self.open_runs: set[str] = set()

    # ------------------------------------------------------------------ the parent's life
    @classmethod
    def start(cls, tracker: Tracker, cfg: Config, description: str, command: Optional[str]) -> SearchRecord:
        """A new parent run: the config as params and as ``config.yaml``, its description."""
        name = f"{cfg.task.name}__search__{cfg.seed}__{time.strftime('%Y%m%d-%H%M%S')}"
        tags = {TAG_COMMAND: command} if command else {}
        parent = tracker.start_run(name, KIND_SEARCH, params=run_params(cfg, search=True), tags=tags)
        describe(tracker, parent, description)
        tracker.log_artifact_bytes(parent, ARTIFACT_CONFIG, yaml.safe_dump(cfg.model_dump(mode="json")).encode())
        return cls(tracker, parent, command)

    @classmethod
    def resume(cls, tracker: Tracker, parent: str, command: Optional[str]) -> SearchRecord:
        """The parent run a checkpoint names, under way again (``command``: by default the one
        that started it)."""
        tags = tracker.run_tags(parent)
        if tags is None:
            raise CheckpointError(f"checkpoint's parent run {parent} is not in {tracker.uri}")
        tracker.mark_running(parent)
        return cls(tracker, parent, command if command is not None else tags.get(TAG_COMMAND))

    def finish(
        self, best: CandidateRecord, best_cfg: Config, state_dict: dict[str, Any], description: str, generation: int
    ) -> dict[str, float]:
        """The search ends with a winner: its genome, config and weights as the parent's artifacts,
        its fitness as the parent's ``fitness`` at the search's last ``generation``, and its
        ``test/*`` measures (returned)."""
        assert best.fitness is not None, "the winner finished"
        genome = best.genome
        self.tracker.log_artifact_bytes(self.parent, ARTIFACT_BEST_GENOME, yaml.safe_dump(genome).encode())
        best_yaml = yaml.safe_dump(best_cfg.model_dump(mode="json")).encode()
        self.tracker.log_artifact_bytes(self.parent, ARTIFACT_BEST_CONFIG, best_yaml)
        self.tracker.log_artifact_bytes(self.parent, ARTIFACT_WEIGHTS, weights_bytes(best_cfg, state_dict))
        self.tracker.set_tags(self.parent, {TAG_BEST_GENOME: GenomeSpace.describe(genome), TAG_BEST_RUN: best.run_id})
        # the winner re-measured on fresh episodes of reserved seeds: the search's result, beside
        # the selection figure (its own evaluation episodes chose it, so they flatter it)
        test = {k: v for k, v in self.tracker.run_metrics(best.run_id).items() if k.startswith("test/")}
        self.tracker.log_metrics(self.parent, {METRIC_FITNESS: best.fitness, **test}, step=generation)
        describe(self.tracker, self.parent, description)
        self.tracker.end_run(self.parent, "FINISHED")
        return test

    def fail(self, reason: str) -> None:
        """The search ends without a winner."""
        self.tracker.end_run(self.parent, "FAILED", reason)

    def abandon(self, status: str, reason: str) -> None:
        """The search stops early: the candidates under way end with it (a resume runs them again)."""
        for run_id in sorted(self.open_runs):
            self.tracker.end_run(run_id, status, reason)
        self.open_runs.clear()
        self.tracker.end_run(self.parent, status, reason)

    def log_generation(self, generation: int, metrics: dict[str, float]) -> None:
        """A generation's metrics, once: a resume that redoes a generation does not log it twice."""
        logged = self.tracker.metric_history(self.parent, METRIC_BEST_FITNESS)
        if any(step == generation for step, _ in logged):
            return
        self.tracker.log_metrics(self.parent, metrics, step=generation)

    # ------------------------------------------------------------------ children
    def open_child(
        self,
        generation: int,
        index: int,
        unit: list[float],
        genome: dict[str, Any],
        cfg: Config,
        inherited_from: Optional[str] = None,
        inherited: tuple[str, ...] = (),
        lineage_genes: tuple[str, ...] = (),
        start_time: Optional[float] = None,
    ) -> str:
        """A RUNNING child run for a candidate a worker took at ``start_time`` (seconds since the
        epoch; default now)."""
        name = f"g{generation:03d}-c{index:03d} {GenomeSpace.describe(genome)}"
        tags = candidate_tags(generation, index, unit, genome, inherited_from, inherited, lineage_genes)
        run_id = self.tracker.start_run(
            name[:250],
            KIND_CANDIDATE,
            params=run_params(cfg),
            tags=tags,
            parent_run_id=self.parent,
            start_time=start_time,
        )
        self.open_runs.add(run_id)
        return run_id

    def log_rung(self, run_id: str, rung: int, result: TrainResult, nodes: Sequence[str] = ()) -> None:
        """A rung's curves (steps going on from the state it started from), its fitness, and the
        ``nodes`` that trained the candidate so far."""
        history = [*result.history, *([(rung, {METRIC_RUNG_FITNESS: result.fitness})] if not result.failed else [])]
        self.tracker.log_history(run_id, history, rung_tag(rung, nodes))  # one call to the store

    def close_child(
        self, run_id: str, result: TrainResult, cpu_s: float, wall_s: float, keep_state: bool, queue_wait_s: float = 0.0
    ) -> None:
        """End a child at the rung where it stopped: final metrics (``queue_wait_s``: its time
        queued for workers), its state, its status."""
        budget = result.state.cpu_s if result.state is not None else cpu_s
        extra = {METRIC_BUDGET_CPU_S: budget} if not result.failed else {}
        metrics = {**final_metrics(result, wall_s, cpu_s, **extra), METRIC_QUEUE_WAIT_S: queue_wait_s}
        if keep_state and result.state is not None and not result.failed:
            buf = io.BytesIO()
            torch.save(asdict(result.state), buf)
            self.tracker.log_artifact_bytes(run_id, ARTIFACT_STATE, buf.getvalue())
        self.tracker.end_run(run_id, result.status, result.reason, [(result.steps, metrics)])
        self.open_runs.discard(run_id)

    def trained_state(self, run_id: str) -> Optional[TrainState]:
        """A finished candidate's trained state, read back from its run (``None``: none kept)."""
        data = self.tracker.read_artifact(run_id, ARTIFACT_STATE)
        if data is None:
            return None
        return TrainState(**torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))

    def stored_children(self) -> list[CandidateRecord]:
        """The children already in the store (for a resume).  Runs a killed driver left RUNNING
        are deleted: their candidates are run again."""
        out = []
        for run in self.tracker.children(self.parent):
            if run.info.status not in TERMINAL:
                self.tracker.delete_run(run.info.run_id)
                continue
            history = self.tracker.metric_history(run.info.run_id, METRIC_RUNG_FITNESS)
            out.append(
                decode_candidate(
                    run.info.run_id, run.info.status, run.data.tags, run.data.metrics, [v for _, v in history]
                )
            )
        return out

    def delete(self, run_id: str) -> None:
        """Remove a child run (one logged for another genome than a resume now gives its place)."""
        self.tracker.delete_run(run_id)
