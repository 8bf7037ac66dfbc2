"""Successive halving inside a generation: every candidate trains to the first rung, the best
``keep`` fraction goes on to the next, and so on; each promotion is made as soon as it is certain,
so slots never wait for a rung's last candidate while promotable work exists.  The outcome does
not depend on the order in which results arrive.

This module is the whole policy: :class:`SuccessiveHalving` runs a generation's jobs through the
rungs (which share of the budget each trains, who goes on, who stops) on a pool of workers, and
tells a :class:`RungListener` what happened; the caller records it."""

from __future__ import annotations

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
    "budget_fraction",
    "decide",
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
    row: Optional[int] = None  # an elite training on: its row in the GA's population
    run_id: Optional[str] = None  # its child run, opened when a worker first takes it
    fitness: list[float] = field(default_factory=list)  # at each completed rung
    result: Optional[TrainResult] = None  # of its last rung
    cpu_s: float = 0.0
    wall_s: float = 0.0
    queue_wait_s: float = 0.0  # queued for a worker, every rung
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

    def progressed(self, jobs: Sequence[Job]) -> None:
        """Something changed among ``jobs`` (for a progress display)."""
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
            took()

        def stop(job: Job) -> None:
            job.decided = job.done = True
            listener.stopped(job)

        listener.progressed(jobs)
        for job in jobs:
            if not job.done:
                promote(job, 0)
        while True:
            decide(list(jobs), quota, promote, stop)
            if not pool.pending:
                break
            key, result = pool.next_result()
            took()
            job = by_index[key]
            job.result, job.decided = result, False  # a rung completed: its next step is to be decided
            job.cpu_s += result.cpu_time
            job.wall_s += result.wall_time
            job.fitness.append(result.fitness if not result.failed else -math.inf)
            listener.completed(job, result)
            if result.failed or job.rung == last:
                stop(job)
            listener.progressed(jobs)


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


def decide(jobs: list[Job], quota: list[int], promote: Callable[[Job, int], None], stop: Callable[[Job], None]) -> None:
    """Promote (``promote(job, next_rung)``) or stop (``stop(job)``) every job whose place in its
    rung is certain.

    Rung ``k`` sends on its ``quota[k]`` best.  A job is certainly among them when fewer than
    ``quota[k]`` others are ahead of it or may still arrive (``pending``), and certainly not
    when ``quota[k]`` are ahead; once the rung is complete every place is known."""
    cap = len(jobs)  # at most how many jobs complete rung k
    for k, m in enumerate(quota):
        at_k = [j for j in jobs if j.rung >= k]
        pending = cap - len(at_k)
        ranked = sorted((j for j in at_k if j.fitness[k] > -math.inf), key=lambda j: (-j.fitness[k], j.index))
        for place, job in enumerate(ranked):
            if job.rung == k and not job.decided and (place + pending < m or place >= m or pending == 0):
                job.decided = True
                if place < m:
                    promote(job, k + 1)
                else:
                    stop(job)
        promoted = sum(1 for j in jobs if j.rung > k or (j.rung == k and j.decided and not j.done))
        cap = promoted if pending == 0 else m
