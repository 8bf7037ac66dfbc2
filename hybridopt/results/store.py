"""Searches and train runs as the tracking store holds them (read only).

A search's candidates come back as :class:`~hybridopt.stored_names.CandidateRecord`, decoded
from their tags and metrics by :func:`~hybridopt.stored_names.decode_candidate`, the codec the
search's record writes them with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from hybridopt.stored_names import (
    GENERATION_METRICS,
    KIND_CANDIDATE,
    KIND_SEARCH,
    KIND_TRAIN,
    METRIC_BEST_FITNESS,
    TAG_KIND,
    TAG_PARENT,
    CandidateRecord,
    decode_candidate,
)
from hybridopt.tracking import store_client

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

__all__ = ["SearchView", "TrainView", "best_fitness_of", "find", "load_search", "load_train"]


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
    candidates: list[CandidateRecord] = field(default_factory=list)
    rules: dict[str, dict[str, str]] = field(default_factory=dict)
    """Each candidate's rule family per projection (run id -> ``{projection: rule}``), as its run
    logged its config: a rule a bundle gene set is there, though no gene names its path."""

    def rule(self, candidate: CandidateRecord, projection: str) -> str:
        """``candidate``'s rule family on ``projection``: its genome's gene where one names the
        path, else the config its run logged, else ``"fixed"``."""
        gene = candidate.genome.get(f"plasticity.{projection}.rule")
        if gene is not None:
            return str(gene)
        return self.rules.get(candidate.run_id, {}).get(projection, "fixed")

    @property
    def searched_projections(self) -> list[str]:
        """Projections whose rule family the search varied: a gene names the path, or its
        candidates ran more than one family there (a bundle's choices set it)."""
        out = [g.split(".")[1] for g in self.genes if g.startswith("plasticity.") and g.endswith(".rule")]
        for proj in sorted({p for r in self.rules.values() for p in r}):
            if proj not in out and len({self.rule(c, proj) for c in self.candidates}) > 1:
                out.append(proj)
        return out

    @property
    def genes(self) -> list[str]:
        """The searched genes, in the order the genomes list them."""
        out: list[str] = []
        for c in self.candidates:
            out += [g for g in c.genome if g not in out]
        return out

    def ranked(self) -> list[CandidateRecord]:
        """Finished candidates best first, then the rest."""
        return sorted(self.candidates, key=lambda c: (c.fitness is None, -(c.fitness or 0.0), c.generation, c.index))

    @property
    def best(self) -> Optional[CandidateRecord]:
        ranked = [c for c in self.ranked() if c.fitness is not None]
        return ranked[0] if ranked else None


@dataclass
class TrainView(_RunView):
    """A train run: its curves and final metrics."""

    metrics: dict[str, float]
    curves: dict[str, list[tuple[int, float]]]


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _seconds(run: Run) -> float:
    end = run.info.end_time or run.info.start_time
    return max(0.0, (end - run.info.start_time) / 1000.0)


def load_search(client: MlflowClient, run: Run) -> SearchView:
    exp = client.get_experiment(run.info.experiment_id)
    gens = {k: _history(client, run.info.run_id, k) for k in GENERATION_METRICS if k in run.data.metrics}
    children = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.{TAG_PARENT} = '{run.info.run_id}'", max_results=50000
    )
    cands = [
        decode_candidate(
            ch.info.run_id,
            ch.info.status,
            ch.data.tags,
            ch.data.metrics,
            name=ch.info.run_name or ch.info.run_id,
            wall_s=_seconds(ch),
        )
        for ch in children
    ]
    cands.sort(key=lambda c: (c.generation, c.index))
    rules = {ch.info.run_id: _rules(ch.data.params) for ch in children}
    return SearchView(
        run.info.run_id, run.info.run_name or run.info.run_id, exp.name, run.info.status,
        dict(run.data.params), dict(run.data.tags), gens, cands, rules,
    )  # fmt: skip


def _rules(params: dict[str, str]) -> dict[str, str]:
    """``{projection: rule}`` from a run's params (``plasticity.<projection>.rule``)."""
    out: dict[str, str] = {}
    for key, value in params.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "plasticity" and parts[2] == "rule":
            out[parts[1]] = value
    return out


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
    client = store_client(uri)
    exp = client.get_experiment_by_name(target)
    if exp is not None:
        runs = [
            run
            for kind in (KIND_SEARCH, KIND_TRAIN)
            for run in client.search_runs(
                [exp.experiment_id], filter_string=f"tags.`{TAG_KIND}` = '{kind}'", max_results=5000
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
        kind = run.data.tags.get(TAG_KIND)
        if kind == KIND_SEARCH:
            out.append(load_search(client, run))
        elif kind == KIND_TRAIN:
            out.append(load_train(client, run))
        elif kind == KIND_CANDIDATE:  # a child: its own curves
            out.append(load_train(client, run))
    if not out:
        raise LookupError(f"{target!r} in {uri} has no search or train runs")
    return out


def best_fitness_of(uri: str, run_id: str) -> Optional[float]:
    """A search's best fitness so far, as its parent run in the store at ``uri`` has it (``None``:
    not yet logged)."""
    metrics = store_client(uri).get_run(run_id).data.metrics
    return metrics.get(METRIC_BEST_FITNESS)
