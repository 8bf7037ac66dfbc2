"""Searches and train runs as the tracking store holds them (read only)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient

__all__ = ["Candidate", "SearchView", "TrainView", "find", "load_search", "load_train"]


@dataclass
class Candidate:
    """One child run of a search."""

    run_id: str
    name: str
    generation: int
    index: int
    genome: dict[str, Any]
    status: str
    fitness: Optional[float]
    rung: int
    inherited_from: Optional[str]
    wall_s: float
    cpu_s: float
    budget_cpu_s: float

    @property
    def label(self) -> str:
        """``g002-c005``: generation and candidate number."""
        return f"g{self.generation:03d}-c{self.index:03d}"


@dataclass
class _RunView:
    run_id: str
    name: str
    experiment: str
    status: str
    params: dict[str, str]


@dataclass
class SearchView(_RunView):
    """A search: its parent run, per-generation curves and its candidates."""

    tags: dict[str, str]
    generations: dict[str, list[tuple[int, float]]]  # metric -> [(generation, value)]
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def genes(self) -> list[str]:
        """The searched genes, in the order the genomes list them."""
        out: list[str] = []
        for c in self.candidates:
            out += [g for g in c.genome if g not in out]
        return out

    def ranked(self) -> list[Candidate]:
        """Finished candidates best first, then the rest."""
        return sorted(self.candidates, key=lambda c: (c.fitness is None, -(c.fitness or 0.0), c.generation, c.index))

    @property
    def best(self) -> Optional[Candidate]:
        ranked = [c for c in self.ranked() if c.fitness is not None]
        return ranked[0] if ranked else None


@dataclass
class TrainView(_RunView):
    """A train run: its curves and final metrics."""

    metrics: dict[str, float]
    curves: dict[str, list[tuple[int, float]]]


def _client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri)


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _seconds(run: Run) -> float:
    end = run.info.end_time or run.info.start_time
    return max(0.0, (end - run.info.start_time) / 1000.0)


def load_search(client: MlflowClient, run: Run) -> SearchView:
    exp = client.get_experiment(run.info.experiment_id)
    keys = ("best_fitness", "mean_fitness", "cpu_s", "failed", "candidates_in_generation")
    gens = {k: _history(client, run.info.run_id, k) for k in keys if k in run.data.metrics}
    children = client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'",
        run_view_type=ViewType.ACTIVE_ONLY,
        max_results=50000,
    )
    cands = []
    for ch in children:
        t, m = ch.data.tags, ch.data.metrics
        finished = ch.info.status == "FINISHED" and "fitness" in m
        cands.append(
            Candidate(
                run_id=ch.info.run_id,
                name=ch.info.run_name or ch.info.run_id,
                generation=int(t.get("hybridopt.generation", 0)),
                index=int(t.get("hybridopt.candidate", 0)),
                genome=json.loads(t.get("hybridopt.genome", "{}")),
                status=ch.info.status,
                fitness=float(m["fitness"]) if finished else None,
                rung=int(t.get("hybridopt.rung", 0)),
                inherited_from=t.get("hybridopt.inherited_from"),
                wall_s=float(m.get("wall_time_s", _seconds(ch))),
                cpu_s=float(m.get("cpu_time_s", 0.0)),
                budget_cpu_s=float(m.get("budget_cpu_s", m.get("cpu_time_s", 0.0))),
            )
        )
    cands.sort(key=lambda c: (c.generation, c.index))
    return SearchView(
        run.info.run_id, run.info.run_name or run.info.run_id, exp.name, run.info.status,
        dict(run.data.params), dict(run.data.tags), gens, cands,
    )  # fmt: skip


def load_train(client: MlflowClient, run: Run) -> TrainView:
    exp = client.get_experiment(run.info.experiment_id)
    curves = {k: _history(client, run.info.run_id, k) for k in run.data.metrics}
    return TrainView(
        run.info.run_id, run.info.run_name or run.info.run_id, exp.name, run.info.status,
        dict(run.data.params), dict(run.data.metrics), curves,
    )  # fmt: skip


def find(uri: str, target: str) -> list[SearchView | TrainView]:
    """The searches and train runs ``target`` names: an experiment (all its searches and train
    runs, oldest first) or one run id.  Raises ``LookupError`` when the store has neither."""
    client = _client(uri)
    exp = client.get_experiment_by_name(target)
    if exp is not None:
        runs = [
            run
            for kind in ("search", "train")
            for run in client.search_runs(
                [exp.experiment_id],
                filter_string=f"tags.`hybridopt.kind` = '{kind}'",
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=5000,
            )
        ]
        runs.sort(key=lambda r: r.info.start_time)
    else:
        try:
            runs = [client.get_run(target)]
        except Exception:  # noqa: BLE001 - MLflow raises its own kinds for an unknown id
            raise LookupError(f"no experiment or run named {target!r} in {uri}") from None
    out: list[SearchView | TrainView] = []
    for run in runs:
        kind = run.data.tags.get("hybridopt.kind")
        if kind == "search":
            out.append(load_search(client, run))
        elif kind == "train":
            out.append(load_train(client, run))
        elif kind == "candidate":  # a child: its own curves
            out.append(load_train(client, run))
    if not out:
        raise LookupError(f"{target!r} in {uri} has no search or train runs")
    return out
