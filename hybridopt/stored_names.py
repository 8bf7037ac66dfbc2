"""What the tracking store holds of hybridopt's runs: the names of their tags, metrics and
artifacts, and the persisted shape of a search's candidate with its encoding into tags.

The one place these strings are written.  The search record (the writer), the resume that reads
a search's children back, ``hybridopt report`` and the Jobs service all take them from here, so
a name cannot drift between the side that writes it and a side that reads it.

A candidate's child run carries, as tags:

* ``hybridopt.generation``, ``hybridopt.candidate``: its place in the search (integers);
* ``hybridopt.genome``: the decoded genome, ``{gene path: value}`` as JSON;
* ``hybridopt.genome_unit``: the genome as the GA holds it, ``[u_1, ..., u_n]`` in ``[0, 1]``, JSON;
* ``hybridopt.rung``: the last rung of successive halving it completed (integer);
* ``hybridopt.inherited_from`` / ``hybridopt.inherited``: the run whose trained state it started
  from, and what it kept (comma-separated groups: ``weights``, ``<projection>.plasticity``);
* ``hybridopt.lineage_genes``: the genes whose values in its genome are its parent's, as they only
  set initial values of what it inherited (comma-separated gene paths; absent when none);
* ``hybridopt.failure``: why it failed (FAILED or KILLED runs);
* ``hybridopt.node``: the Ray node (its IP address) that trained it, several comma-separated
  where its rungs trained on different nodes.

and as metrics ``fitness``, ``rung_fitness`` (one value per rung, the rung as its step),
``wall_time_s``, ``cpu_time_s``, ``budget_cpu_s`` and ``queue_wait_s`` (the seconds it waited for
a free worker, every rung; its run starts when a worker first takes it, so the run's duration
is its training and what came between its rungs).  No module here imports MLflow.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = [
    "ARTIFACT_BEST_CONFIG",
    "ARTIFACT_BEST_GENOME",
    "ARTIFACT_CONFIG",
    "ARTIFACT_STATE",
    "ARTIFACT_SUMMARY",
    "ARTIFACT_WEIGHTS",
    "GENERATION_METRICS",
    "TEST_METRICS",
    "KIND_CANDIDATE",
    "KIND_SEARCH",
    "KIND_TRAIN",
    "METRIC_BEST_FITNESS",
    "METRIC_BUDGET_CPU_S",
    "METRIC_CPU_TIME_S",
    "METRIC_FINAL_FITNESS",
    "METRIC_FITNESS",
    "METRIC_QUEUE_WAIT_S",
    "METRIC_RUNG_FITNESS",
    "METRIC_WALL_TIME_S",
    "TAG_BEST_GENOME",
    "TAG_BEST_RUN",
    "TAG_COMMAND",
    "TAG_FAILURE",
    "TAG_KIND",
    "TAG_NODE",
    "TAG_NOTE",
    "TAG_PARENT",
    "CandidateRecord",
    "candidate_tags",
    "decode_candidate",
    "rung_tag",
]

# Tags of every run.
TAG_KIND = "hybridopt.kind"  # one of the KIND_* below
TAG_PARENT = "mlflow.parentRunId"  # MLflow's own: a child run's parent
TAG_NOTE = "mlflow.note.content"  # MLflow's own: the description shown on a run's page
TAG_FAILURE = "hybridopt.failure"  # why a run failed or was killed
KIND_SEARCH, KIND_CANDIDATE, KIND_TRAIN = "search", "candidate", "train"

# Tags of a search's parent run.
TAG_COMMAND = "hybridopt.command"  # the command line that started it
TAG_BEST_GENOME = "hybridopt.best_genome"  # the winner's genome, in one line
TAG_BEST_RUN = "hybridopt.best_run"  # the winner's child run

# Tags of a candidate's child run (see the module's docstring).
TAG_GENERATION = "hybridopt.generation"
TAG_CANDIDATE = "hybridopt.candidate"
TAG_GENOME = "hybridopt.genome"
TAG_GENOME_UNIT = "hybridopt.genome_unit"
TAG_RUNG = "hybridopt.rung"
TAG_INHERITED_FROM = "hybridopt.inherited_from"
TAG_INHERITED = "hybridopt.inherited"
TAG_LINEAGE_GENES = "hybridopt.lineage_genes"
TAG_NODE = "hybridopt.node"

# Metrics.
METRIC_FITNESS = "fitness"  # a finished run's final fitness; a search's winner's, on its parent
METRIC_RUNG_FITNESS = "rung_fitness"  # a candidate's fitness at each rung (step = rung)
METRIC_WALL_TIME_S = "wall_time_s"
METRIC_CPU_TIME_S = "cpu_time_s"  # the run's own training
METRIC_BUDGET_CPU_S = "budget_cpu_s"  # the training behind a candidate's state, inherited included
METRIC_QUEUE_WAIT_S = "queue_wait_s"  # a candidate's time queued for a free worker, all its rungs
METRIC_BEST_FITNESS = "best_fitness"  # a search's best so far, per generation (step = generation)
METRIC_FINAL_FITNESS = "final_fitness"  # the winner's further training (step = generations)
# The winner on reserved test episodes, beside chance and the task's observer (logged at the last generation).
TEST_METRICS = (
    "test/accuracy",
    "test/accuracy_se",
    "test/episodes",
    "test/chance",
    "test/observer",
    "test/observer_se",
)
# A search's per-generation metrics (step = generation), as its parent run holds them.
GENERATION_METRICS = (METRIC_BEST_FITNESS, "mean_fitness", "cpu_s", "failed", "candidates_in_generation", *TEST_METRICS)

# Artifacts.
ARTIFACT_CONFIG = "config.yaml"  # the resolved config of a run
ARTIFACT_WEIGHTS = "weights.pt"  # a train run's weights; a search's winner's, on its parent
ARTIFACT_STATE = "state.pt"  # a finished candidate's trained state (what a child inherits)
ARTIFACT_BEST_GENOME = "best_genome.yaml"
ARTIFACT_BEST_CONFIG = "best_config.yaml"
ARTIFACT_SUMMARY = "summary.html"


@dataclass
class CandidateRecord:
    """One candidate of a search as it is kept: in the tracking store (its child run) and in the
    search's checkpoint.

    ``genome`` is ``{gene path: value}``, ``unit`` the same genome as the GA encodes it.
    ``fitness`` is ``None`` unless it finished with a finite fitness.  ``rung`` is the last rung
    it completed, ``rung_fitness`` its fitness at each (when read back from the store).
    ``cpu_s`` is its own training, ``budget_cpu_s`` the training behind its state, inherited
    included.  ``lineage_genes`` are the genes whose values in ``genome`` are its parent's: they only
    set initial values of tensors it inherited (see :mod:`hybridopt.search.inherit`)."""

    run_id: str
    generation: int
    index: int
    unit: list[float]
    genome: dict[str, Any]
    status: str
    fitness: Optional[float] = None
    reason: Optional[str] = None
    rung: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    budget_cpu_s: float = 0.0
    inherited_from: Optional[str] = None
    inherited: tuple[str, ...] = ()
    lineage_genes: tuple[str, ...] = ()
    rung_fitness: list[float] = field(default_factory=list)
    name: str = ""
    node: str = ""  # the node(s) that trained it, comma-separated

    @property
    def finished(self) -> bool:
        """It trained to the end with a finite fitness."""
        return self.fitness is not None

    @property
    def label(self) -> str:
        """``g002-c005``: generation and candidate number."""
        return f"g{self.generation:03d}-c{self.index:03d}"

    def line(self, genome: str) -> str:
        """What the progress display shows when it stops, ``genome`` in one line:
        ``g003 c005   0.7312  finished  rung 2    180 CPU-s   281 s  input=stdp/plain ...``"""
        fit = "failed" if self.fitness is None else f"{self.fitness:.4f}"
        why = f" ({self.reason})" if self.reason else ""
        return (
            f"g{self.generation:03d} c{self.index:03d}  {fit:>7}  {self.status.lower()}{why}  rung {self.rung}  "
            f"{self.cpu_s:5.0f} CPU-s {self.wall_s:5.0f} s  {genome}"
        )


def candidate_tags(
    generation: int,
    index: int,
    unit: Sequence[float],
    genome: Mapping[str, Any],
    inherited_from: Optional[str] = None,
    inherited: Sequence[str] = (),
    lineage_genes: Sequence[str] = (),
) -> dict[str, str]:
    """The tags a candidate's child run starts with (at rung 0)."""
    tags = {
        TAG_GENERATION: str(generation),
        TAG_CANDIDATE: str(index),
        TAG_GENOME: json.dumps(dict(genome)),
        TAG_GENOME_UNIT: json.dumps(list(unit)),
        TAG_RUNG: "0",
    }
    if inherited_from is not None:  # lineage: whose trained state it started from, and what it kept
        tags[TAG_INHERITED_FROM] = inherited_from
        tags[TAG_INHERITED] = ",".join(inherited)
    if lineage_genes:
        tags[TAG_LINEAGE_GENES] = ",".join(lineage_genes)
    return tags


def rung_tag(rung: int, nodes: Sequence[str] = ()) -> dict[str, str]:
    """The tags a child run gets as it completes ``rung``: the rung, and the ``nodes`` that have
    trained it so far."""
    return {TAG_RUNG: str(rung), **({TAG_NODE: ",".join(nodes)} if nodes else {})}


def decode_candidate(
    run_id: str,
    status: str,
    tags: Mapping[str, str],
    metrics: Mapping[str, float],
    rung_fitness: Sequence[float] = (),
    name: str = "",
    wall_s: Optional[float] = None,
) -> CandidateRecord:
    """A child run read back from the store (``wall_s``: when it logged no ``wall_time_s``, its
    duration)."""
    finished = status == "FINISHED" and METRIC_FITNESS in metrics
    inherited, lineage = tags.get(TAG_INHERITED, ""), tags.get(TAG_LINEAGE_GENES, "")
    return CandidateRecord(
        run_id=run_id,
        generation=int(tags.get(TAG_GENERATION, 0)),
        index=int(tags.get(TAG_CANDIDATE, 0)),
        unit=json.loads(tags.get(TAG_GENOME_UNIT, "[]")),
        genome=json.loads(tags.get(TAG_GENOME, "{}")),
        status=status,
        fitness=float(metrics[METRIC_FITNESS]) if finished else None,
        reason=tags.get(TAG_FAILURE),
        rung=int(tags.get(TAG_RUNG, 0)),
        wall_s=float(metrics.get(METRIC_WALL_TIME_S, wall_s or 0.0)),
        cpu_s=float(metrics.get(METRIC_CPU_TIME_S, 0.0)),
        budget_cpu_s=float(metrics.get(METRIC_BUDGET_CPU_S, metrics.get(METRIC_CPU_TIME_S, 0.0))),
        inherited_from=tags.get(TAG_INHERITED_FROM),
        inherited=tuple(inherited.split(",")) if inherited else (),
        lineage_genes=tuple(lineage.split(",")) if lineage else (),
        rung_fitness=list(rung_fitness),
        name=name,
        node=tags.get(TAG_NODE, ""),
    )
