"""Successive halving inside a generation: every candidate trains to the first rung, the best
``keep`` fraction goes on to the next, and so on; each promotion is made as soon as it is certain,
so slots never wait for a rung's last candidate while promotable work exists.  The outcome does
not depend on the order in which results arrive."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

from hybridopt.config import Config
from hybridopt.search.record import ChildRun
from hybridopt.train import TrainResult, TrainState, inner_loop

__all__ = ["Job", "budget_fraction", "decide", "quotas", "scaled_budget"]


@dataclass
class Job:
    """One candidate of a generation on its way through the rungs."""

    index: int  # its candidate number in the generation (elites training on come after the new ones)
    unit: list[float]
    values: dict[str, Any]
    cfg: Config
    start: Optional[TrainState] = None
    parent: Optional[str] = None  # the run whose state it started from
    kept: tuple[str, ...] = ()
    row: Optional[int] = None  # an elite training on: its row in the GA's population
    run_id: Optional[str] = None
    fitness: list[float] = field(default_factory=list)  # at each completed rung
    result: Optional[TrainResult] = None  # of its last rung
    cpu_s: float = 0.0
    wall_s: float = 0.0
    decided: bool = False  # promoted from, or stopped at, its last completed rung
    done: bool = False
    stored: Optional[ChildRun] = None  # finished before a resume

    @property
    def rung(self) -> int:
        """The last rung it completed (-1: none yet)."""
        return len(self.fitness) - 1


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
