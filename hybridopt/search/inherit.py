"""Lamarckian inheritance: a child's training starts from the trained state of its parent.

A child's network is built fresh for its own config, then takes from the parent's trained state
every entry that still means the same thing:

- ``weights``: every weight, bias and readout (and a policy's observation statistics) whose
  name and shape match;
- ``<projection>.plasticity``: a projection's plastic coefficients (``alpha``, ``eta`` or the
  modulator ``mod_a``/``mod_b``/``w_M``/``b_M``/``w_G``/``b_G``/``eta_E``, and the rule's own coefficients), only
  where the projection's rule family and modulation mode are the parent's, shapes matching.

Whatever changed starts from the child config's own initialisation.  Training steps, CPU
seconds and episodes behind the parent's state come along (the child's curves go on from the
parent's step); the optimiser starts afresh unless the child's config is the parent's.

A gene that only sets an initial value (``plasticity.<p>.alpha_init``, ``eta_init``,
``eta_E_init``, ``coefficients``) no longer acts on a child that inherits the tensors it
initialises: the child starts where its parent's lineage started.  Such a gene is a *lineage
gene* of the child, and its genome carries the parent's value of it (the value that did
initialise those tensors, at the lineage's root), not the value the GA proposed; so a winner's
recorded genome, trained from scratch, starts as its lineage did.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional

import numpy as np
import torch

from hybridopt.config import Config
from hybridopt.search.genome import Gene
from hybridopt.search.halving import Job
from hybridopt.snn.catalogue import PROJECTIONS
from hybridopt.snn.spec import PROJECTION_INITIAL_VALUES
from hybridopt.stored_names import CandidateRecord
from hybridopt.train import TrainState, initial_model

__all__ = ["Lineage", "inherit", "initial_value_gene", "lineage_genes", "parameter_owner"]


def parameter_owner(name: str) -> str:
    """The group a state entry belongs to: ``"weights"`` or ``"<projection>.plasticity"``.

    ``projections.<p>.W`` is a weight; every other entry under ``projections.<p>.`` is that
    projection's plastic coefficient; everything else (biases, a policy's ``obs_norm.*``) is a
    weight."""
    parts = name.split(".")
    if len(parts) >= 3 and parts[0] == "projections" and parts[1] in PROJECTIONS and parts[2] != "W":
        return f"{parts[1]}.plasticity"
    return "weights"


def _same_plasticity(a: Config, b: Config, projection: str) -> bool:
    pa, pb = getattr(a.plasticity, projection), getattr(b.plasticity, projection)
    return pa.rule == pb.rule and pa.modulation == pb.modulation


def initial_value_gene(path: str) -> bool:
    """Whether a gene's config path only sets the initial value of a projection's learned
    plastic tensors (``plasticity.<p>.<field>``, ``field`` one of ``PROJECTION_INITIAL_VALUES``)."""
    parts = path.split(".")
    if len(parts) < 3 or parts[0] != "plasticity":
        return False
    return parts[1] in PROJECTIONS and parts[2] in PROJECTION_INITIAL_VALUES


def inherit(parent: TrainState, parent_cfg: Config, child_cfg: Config) -> tuple[TrainState, list[str]]:
    """The state a child of ``child_cfg`` starts from, and which groups it kept from ``parent``.

    The groups are listed in a fixed order (``weights`` first, then the projections' plasticity
    in network order); an empty list means nothing matched (the child starts fresh but for its
    step count)."""
    state, groups, _, _ = _start(parent, parent_cfg, child_cfg)
    return state, groups


def _start(
    parent: TrainState, parent_cfg: Config, child_cfg: Config
) -> tuple[TrainState, list[str], dict[str, Any], set[str]]:
    """:func:`inherit`'s state and groups, the child's fresh model, and the names of the entries
    taken from ``parent``."""
    fresh: dict[str, Any] = initial_model(child_cfg)
    model: dict[str, Any] = {}
    kept: set[str] = set()
    copied: set[str] = set()
    for name, value in fresh.items():
        owner = parameter_owner(name)
        src = parent.model.get(name)
        same_meaning = owner == "weights" or _same_plasticity(parent_cfg, child_cfg, owner.split(".")[0])
        if src is not None and same_meaning and tuple(src.shape) == tuple(value.shape):
            model[name] = src.clone()
            kept.add(owner)
            copied.add(name)
        else:
            model[name] = value
    order = ["weights", *(f"{p}.plasticity" for p in PROJECTIONS)]
    groups = [g for g in order if g in kept]
    identical = parent_cfg.model_dump(mode="json") == child_cfg.model_dump(mode="json")
    state = TrainState(
        model=model,
        optimizer=parent.optimizer if identical else None,
        step=parent.step,
        cpu_s=parent.cpu_s,
        episodes=parent.episodes,
        rng=parent.rng if identical else None,
    )
    return state, groups, fresh, copied


def _other_value(value: float) -> float:
    """A value unlike ``value`` that every initial-value field accepts (half of it; 0.5 for 0)."""
    return value / 2 if value else 0.5


def lineage_genes(
    genes: Sequence[Gene],
    genome: dict[str, Any],
    fresh: dict[str, Any],
    copied: set[str],
    config_for: Callable[[dict[str, Any]], Config],
) -> list[str]:
    """The genes of a child's ``genome`` that no longer act: each only sets initial values
    (:func:`initial_value_gene`), and every entry of its ``fresh`` model (``initial_model`` of
    ``config_for(genome)``) whose value it sets is among ``copied`` (taken from the parent).
    What a gene sets is found by changing its value alone and seeing which entries of
    :func:`initial_model` change; a gene that sets nothing here (the projection is static) is
    not one."""
    paths = [g.path for g in genes if initial_value_gene(g.path) and _number(genome.get(g.path))]
    moot = []
    for path in paths:
        other = initial_model(config_for({**genome, path: _other_value(float(genome[path]))}))
        sets = [
            name
            for name, v in fresh.items()
            if name not in other or other[name].shape != v.shape or not torch.equal(other[name], v)
        ]
        if sets and all(name in copied for name in sets):
            moot.append(path)
    return moot


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Lineage:
    """Who a candidate inherits from: the members of the current population (``(row, record)``),
    their trained states (cached; read back from their runs with ``read_state`` after a resume),
    and the member a child shares most genes with."""

    def __init__(self, genes: Sequence[Gene], read_state: Callable[[str], Optional[TrainState]]):
        self.genes = genes
        self.read_state = read_state
        self.members: list[tuple[int, CandidateRecord]] = []
        self.trained: dict[str, TrainState] = {}  # run id -> trained state (the members')
        self._coded: Optional[tuple[Any, Any]] = None  # (members, what _finished() made of them)

    def set_population(self, records: Sequence[CandidateRecord], population: Any) -> None:
        """The population's rows and the latest record with each row's genome; states of those
        no longer in it are dropped (only members can be parents)."""
        by_unit = {tuple(r.unit): r for r in records}
        rows = ((i, by_unit.get(tuple(float(x) for x in u))) for i, u in enumerate(population))
        self.members = [(i, m) for i, m in rows if m is not None]
        alive = {m.run_id for _, m in self.members}
        self.trained = {k: v for k, v in self.trained.items() if k in alive}

    def parent_of(self, unit: list[float], genome: dict[str, Any]) -> Optional[CandidateRecord]:
        """The finished member that shares most genes with a child (ties: the nearest in the unit
        genome, then the first)."""
        finished, codes, table = self._finished()
        if table is not None:  # the members' genes as codes, one row a member: counted at once
            row = [codes[j].get(genome[g.path], -1) for j, g in enumerate(self.genes)]
            shared = (table == np.asarray(row)).sum(axis=1)
            finished = [finished[i] for i in np.flatnonzero(shared == shared.max())] if len(finished) else []
        best, key = None, None
        for m in finished:
            shared_genes = sum(genome[g.path] == m.genome[g.path] for g in self.genes)
            k = (-shared_genes, sum(abs(a - b) for a, b in zip(unit, m.unit)))
            if key is None or k < key:
                best, key = m, k
        return best

    def _finished(self) -> tuple[list[CandidateRecord], list[dict[Any, int]], Optional[np.ndarray]]:
        """The finished members, a code for each gene's values among them, and their genes so
        coded (``None`` where a value cannot be a key: those are compared one by one); built once
        per population."""
        if self._coded is not None and self._coded[0] is self.members:
            return self._coded[1]
        finished = [m for _, m in self.members if m.status == "FINISHED"]
        codes: list[dict[Any, int]] = [{} for _ in self.genes]
        try:
            rows = [
                [codes[j].setdefault(m.genome[g.path], len(codes[j])) for j, g in enumerate(self.genes)]
                for m in finished
            ]
            table: Optional[np.ndarray] = np.asarray(rows, dtype=np.int64).reshape(len(finished), len(self.genes))
        except TypeError:  # an unhashable value (a list among the choices)
            table = None
        self._coded = (self.members, (finished, codes, table))
        return self._coded[1]

    def state(self, run_id: str) -> Optional[TrainState]:
        """A candidate's trained state: cached, or read back from its run."""
        if run_id not in self.trained:
            state = self.read_state(run_id)
            if state is None:
                return None
            self.trained[run_id] = state
        return self.trained[run_id]

    def child(self, job: Job, config_for: Callable[[dict[str, Any]], Config]) -> Job:
        """``job`` set to start from the trained state of the member it shares most genes with
        (``config_for(genome)``: a member's config), its lineage genes set to that member's
        values (see :func:`lineage_genes`); unchanged when there is none."""
        parent = self.parent_of(job.unit, job.genome)
        state = self.state(parent.run_id) if parent is not None else None
        if parent is not None and state is not None:
            job.start, kept, fresh, copied = _start(state, config_for(parent.genome), job.cfg)
            job.inherited_from, job.inherited = parent.run_id, tuple(kept)
            moot = lineage_genes(self.genes, job.genome, fresh, copied, config_for)
            if moot:  # they start where the parent's lineage started: its values are the child's
                job.genome = {**job.genome, **{p: parent.genome[p] for p in moot}}
                job.cfg = config_for(job.genome)
                job.lineage_genes = tuple(moot)
        return job

    def training_on(
        self, rows: Sequence[int], first_index: int, config_for: Callable[[dict[str, Any]], Config]
    ) -> list[Job]:
        """Jobs for the members in population ``rows`` (the elites) to train on from their own
        state, everything kept (optimiser included), numbered from ``first_index``; a member
        whose state is not kept is left out."""
        by_row = dict(self.members)
        jobs: list[Job] = []
        for row in rows:
            m = by_row.get(row)
            state = self.state(m.run_id) if m is not None and m.status == "FINISHED" else None
            if m is None or state is None:
                continue
            jobs.append(self.continued(m, state, first_index + len(jobs), config_for(m.genome), row))
        return jobs

    @staticmethod
    def continued(
        member: CandidateRecord, state: TrainState, index: int, cfg: Config, row: Optional[int] = None
    ) -> Job:
        """A job for ``member`` to train on from its own ``state`` under ``cfg``."""
        job = Job(index, list(member.unit), dict(member.genome), cfg, row=row)
        start, kept = inherit(state, cfg, cfg)  # its own state: everything, optimiser included
        job.start, job.inherited_from, job.inherited = start, member.run_id, tuple(kept)
        job.lineage_genes = member.lineage_genes
        return job
