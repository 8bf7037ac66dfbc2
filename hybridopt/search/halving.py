"""Successive halving inside a generation: every candidate trains to the first rung, the best
``keep`` fraction goes on to the next, and so on; each promotion is made as soon as it is certain,
so slots never wait for a rung's last candidate while promotable work exists.  The outcome does
not depend on the order in which results arrive.

This module is the whole policy: :class:`SuccessiveHalving` runs a generation's jobs through the
rungs (which share of the budget each trains, who goes on, who stops) on a pool of workers, and
tells a :class:`RungListener` what happened; the caller records it."""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

from hybridopt.config import Config
from hybridopt.stored_names import CandidateRecord
from hybridopt.train import TrainResult, TrainState, inner_loop

__all__ = [
    "Job",
    "RungListener",
    "RungPool",
    "SuccessiveHalving",
    "Taken",
    "Ladder",
    "budget_fraction",
    "quotas",
    "scaled_budget",
]


@dataclass
class Job:
    """One candidate of a generation on its way through the rungs (what is in flight; a finished
    one is kept as a :class:`~hybridopt.stored_names.CandidateRecord`)."""

    index: int  # its candidate number in the generation (elites training on come after the new ones)
    unit: list[float]
    genome: dict[str, Any]
    cfg: Config
    start: Optional[TrainState] = None
    inherited_from: Optional[str] = None  # the run whose state it started from
    inherited: tuple[str, ...] = ()
    lineage_genes: tuple[str, ...] = ()  # genes whose values are its lineage's (see hybridopt.search.inherit)
    row: Optional[int] = None  # an elite training on: its row in the GA's population
    run_id: Optional[str] = None  # its child run, opened when a worker first takes it
    fitness: list[float] = field(default_factory=list)  # at each completed rung
    result: Optional[TrainResult] = None  # of its last rung
    cpu_s: float = 0.0
    wall_s: float = 0.0
    queue_wait_s: float = 0.0  # queued for a worker, every rung
    nodes: list[str] = field(default_factory=list)  # the nodes that trained it, in order
    decided: bool = False  # promoted from, or stopped at, its last completed rung
    done: bool = False
    stored: Optional[CandidateRecord] = None  # finished before a resume

    @property
    def rung(self) -> int:
        """The last rung it completed (-1: none yet)."""
        return len(self.fitness) - 1

    def take_stored(self, stored: CandidateRecord) -> None:
        """It finished before a resume: its rungs are known (a failed one ends on ``-inf``)."""
        self.stored = stored
        fitness = list(stored.rung_fitness) + ([-math.inf] if stored.status == "FAILED" else [])
        self.fitness = fitness[: stored.rung + 1] or [-math.inf]
        self.decided = self.done = True

    def record(self, generation: int) -> CandidateRecord:
        """What is kept of it once it stopped."""
        if self.stored is not None:
            return dataclasses.replace(self.stored, unit=list(self.unit), genome=dict(self.genome))
        result = self.result
        assert result is not None and self.run_id is not None, "a job is recorded once it stopped"
        finished = not result.failed and math.isfinite(result.fitness)
        return CandidateRecord(
            run_id=self.run_id,
            generation=generation,
            index=self.index,
            unit=list(self.unit),
            genome=dict(self.genome),
            status=result.status,
            fitness=result.fitness if finished else None,
            reason=result.reason,
            rung=self.rung,
            wall_s=self.wall_s,
            cpu_s=self.cpu_s,
            budget_cpu_s=result.state.cpu_s if result.state is not None else self.cpu_s,
            inherited_from=self.inherited_from,
            inherited=self.inherited,
            lineage_genes=self.lineage_genes,
            node=",".join(self.nodes),
        )


@dataclass(frozen=True)
class Taken:
    """A worker took job ``key`` from the queue at ``at`` (seconds since the epoch), after it
    waited ``waited_s`` seconds there."""

    key: Hashable
    at: float
    waited_s: float


class RungPool(Protocol):
    """Workers that train jobs (:class:`hybridopt.search.dispatch.Pool`): ``submit`` queues a job,
    a free worker takes it (``taken`` tells which, and when), ``next_result`` waits for one to
    complete."""

    @property
    def pending(self) -> int: ...

    def taken(self) -> list[Taken]:
        """The jobs workers took since the last call, in the order they took them."""
        ...

    def submit(
        self, key: Hashable, config: dict[str, Any], start: Optional[TrainState], cpu_budget_s: Optional[float]
    ) -> None: ...

    def next_result(self) -> tuple[Hashable, TrainResult]: ...


class RungListener(Protocol):
    """What the caller of :meth:`SuccessiveHalving.run` is told, to record it."""

    def started(self, job: Job, at: float) -> str:
        """A worker took a job for its first rung at ``at`` (seconds since the epoch); returns the
        id of its run, which starts then."""
        ...

    def completed(self, job: Job, result: TrainResult) -> None:
        """A job completed rung ``job.rung`` with ``result``."""
        ...

    def stopped(self, job: Job) -> None:
        """A job stops at rung ``job.rung``: failed, not promoted, or at the last rung."""
        ...

    def progressed(self, done: int, total: int) -> None:
        """Something changed: ``done`` of the generation's ``total`` jobs have stopped (for a
        progress display)."""
        ...


@dataclass(frozen=True)
class SuccessiveHalving:
    """``rungs``: increasing fractions of a candidate's budget, the last ``1.0``; ``keep``: the
    fraction of a rung's jobs that goes on to the next."""

    rungs: tuple[float, ...]
    keep: float

    def run(self, jobs: Sequence[Job], pool: RungPool, listener: RungListener) -> None:
        """Train ``jobs`` through the rungs on ``pool`` until every one has
        stopped, each promotion made as soon as it is certain.  Jobs that already stopped (taken
        from the store) count in the rankings and train no further."""
        quota = quotas(len(jobs), list(self.rungs), self.keep)
        by_index = {job.index: job for job in jobs}
        last = len(self.rungs) - 1

        def took() -> None:  # its run starts when a worker first takes it, not while it is queued
            for t in pool.taken():
                job = by_index[t.key]
                job.queue_wait_s += t.waited_s
                if job.run_id is None:
                    job.run_id = listener.started(job, t.at)

        def promote(job: Job, rung: int) -> None:
            cfg, cpu = budget_fraction(job.cfg, self.rungs[rung - 1] if rung > 0 else 0.0, self.rungs[rung])
            start = job.start if rung == 0 else job.result.state if job.result is not None else None
            pool.submit(job.index, cfg.model_dump(mode="json"), start, None if math.isinf(cpu) else cpu)

        done = sum(job.done for job in jobs)

        def stop(job: Job) -> None:
            nonlocal done
            job.decided = job.done = True
            done += 1
            listener.stopped(job)

        ladder = Ladder(jobs, quota)
        listener.progressed(done, len(jobs))
        for job in jobs:
            if not job.done:
                promote(job, 0)
        while True:
            ladder.decide(promote, stop)
            took()  # after the submissions: workers have their jobs before the store hears of them
            if not pool.pending:
                break
            key, result = pool.next_result()
            took()
            job = by_index[key]
            job.result, job.decided = result, False  # a rung completed: its next step is to be decided
            job.cpu_s += result.cpu_time
            job.wall_s += result.wall_time
            job.fitness.append(result.fitness if not result.failed else -math.inf)
            if result.node and result.node not in job.nodes:
                job.nodes.append(result.node)
            listener.completed(job, result)
            if result.failed or job.rung == last:
                stop(job)
            ladder.completed(job)
            listener.progressed(done, len(jobs))


def budget_fraction(cfg: Config, lo: float, hi: float) -> tuple[Config, float]:
    """The config and CPU seconds for training from fraction ``lo`` to ``hi`` of a candidate's
    budget (its inner loop's: ``train.steps``, ES ``es.generations``, and that section's CPU-minutes)."""
    budget = inner_loop(cfg).budget
    steps, minutes = budget.steps_of(cfg), budget.minutes_of(cfg)
    n = max(1, round(hi * steps) - round(lo * steps))
    cpu = (hi - lo) * 60.0 * minutes if minutes else math.inf
    return budget.replace(cfg, steps=n), cpu


def scaled_budget(cfg: Config, factor: float) -> Config:
    """The config with a candidate's budget (CPU-minutes and steps; ES: its generations) times ``factor``."""
    budget = inner_loop(cfg).budget
    steps, minutes = budget.steps_of(cfg), budget.minutes_of(cfg)
    return budget.replace(
        cfg, steps=max(1, round(steps * factor)), cpu_minutes=minutes * factor if minutes else minutes
    )


def quotas(n: int, rungs: list[float], keep: float) -> list[int]:
    """How many of ``n`` jobs go on from each rung but the last: ``ceil(keep * previous)``, at least one."""
    out = []
    for _ in rungs[:-1]:
        n = max(1, math.ceil(keep * n))
        out.append(n)
    return out


class Ladder:
    """Where a generation's jobs stand on each rung but the last, kept up to date as results
    arrive, so that deciding after a result costs a few binary searches rather than a sort of
    the generation: at ``quota[k]`` places a rung, for ``len(jobs)`` jobs (those taken from the
    store counted with the rungs they completed)."""

    def __init__(self, jobs: Sequence[Job], quota: list[int]):
        self.quota, self.total = quota, len(jobs)
        self.by_index = {job.index: job for job in jobs}
        self.ranked: list[list[tuple[float, int]]] = [[] for _ in quota]  # (-fitness, index): finite, by place
        self.waiting: list[list[tuple[float, int]]] = [[] for _ in quota]  # of those, the undecided at the rung
        self.arrived = [0] * len(quota)  # jobs that completed the rung (failed ones included)
        self.promoted = [0] * len(quota)  # jobs sent on from the rung
        for job in jobs:
            for k in range(min(len(job.fitness), len(quota))):
                self._arrive(job, k)
            for k in range(min(job.rung, len(quota))):
                self.promoted[k] += 1

    def _arrive(self, job: Job, k: int) -> None:
        self.arrived[k] += 1
        if job.fitness[k] > -math.inf:
            bisect.insort(self.ranked[k], (-job.fitness[k], job.index))

    def completed(self, job: Job) -> None:
        """``job`` completed rung ``job.rung`` (stopped there already, or to be decided)."""
        k = job.rung
        if k < len(self.quota):
            self._arrive(job, k)
            if not job.decided:
                bisect.insort(self.waiting[k], (-job.fitness[k], job.index))

    def decide(self, promote: Callable[[Job, int], None], stop: Callable[[Job], None]) -> None:
        """Promote (``promote(job, next_rung)``) or stop (``stop(job)``) every job whose place in
        its rung is certain, rung by rung, each rung's in order of place.

        Rung ``k`` sends on its ``quota[k]`` best.  A job is certainly among them when fewer than
        ``quota[k]`` others are ahead of it or may still arrive (``pending``), and certainly not
        when ``quota[k]`` are ahead; once the rung is complete every place is known.  Places only
        grow and ``pending`` only shrinks, so the certain ones are the best and the worst of those
        waiting."""
        cap = self.total  # at most how many jobs complete rung k
        for k, m in enumerate(self.quota):
            pending = cap - self.arrived[k]
            ranked, waiting = self.ranked[k], self.waiting[k]
            places = []  # (place, key) of the decided, in order of place
            first = 0
            while first < len(waiting):
                place = bisect.bisect_left(ranked, waiting[first])
                if place >= m or (place + pending >= m and pending > 0):
                    break
                places.append((place, waiting[first]))
                first += 1
            last = len(waiting)
            behind = []
            while last > first and (place := bisect.bisect_left(ranked, waiting[last - 1])) >= m:
                behind.append((place, waiting[last - 1]))
                last -= 1
            del waiting[last:]
            del waiting[:first]
            for place, (_, index) in places + behind[::-1]:
                job = self.by_index[index]
                job.decided = True
                if place < m:
                    self.promoted[k] += 1
                    promote(job, k + 1)
                else:
                    stop(job)
            cap = self.promoted[k] if pending == 0 else m
