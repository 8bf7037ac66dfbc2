"""Successive halving: the budget of a rung, the validation of the rungs, and who goes on (hand-
computed cases, and any arrival order against a plain barrier-at-every-rung version)."""

import math
from collections.abc import Callable
from typing import Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridopt.config import ConfigError, load_config
from hybridopt.search.halving import Job, SuccessiveHalving, Taken, budget_fraction, quotas
from hybridopt.train import TrainResult, TrainState
from tests.conftest import CONFIGS


def test_a_rung_trains_its_share_of_the_steps_and_the_cpu_budget():
    cfg = load_config(CONFIGS / "smoke.yaml", ["train.steps=100", "train.cpu_minutes=2"])
    part, cpu = budget_fraction(cfg, 0.25, 0.5)
    assert part.train.steps == 25 and cpu == pytest.approx(30.0)
    part, cpu = budget_fraction(cfg, 0.0, 0.25)
    assert part.train.steps == 25 and cpu == pytest.approx(30.0)
    part, cpu = budget_fraction(cfg, 0.5, 1.0)
    assert part.train.steps == 50 and cpu == pytest.approx(60.0)
    # a share smaller than one step is still one step; without a CPU budget, none per rung
    small, cpu = budget_fraction(load_config(CONFIGS / "smoke.yaml", ["train.steps=2"]), 0.25, 0.5)
    assert small.train.steps == 1 and math.isinf(cpu)


def test_locomotion_rungs_share_the_generations():
    cfg = load_config(CONFIGS / "smoke_locomotion.yaml", ["es.generations=8", "es.cpu_minutes=1"])
    part, cpu = budget_fraction(cfg, 0.5, 1.0)
    assert part.es.generations == 4 and cpu == pytest.approx(30.0)


@pytest.mark.parametrize("rungs", ["[0.5, 0.25, 1.0]", "[0.25, 0.5]", "[0.0, 1.0]", "[]", "[0.5, 0.5, 1.0]"])
def test_bad_rungs_are_refused(rungs):
    with pytest.raises(ConfigError, match="search.rungs"):
        load_config(CONFIGS / "smoke_search.yaml", [f"search.rungs={rungs}"])


# --------------------------------------------------------------------------- who goes on


def test_each_rung_sends_on_the_ceiling_of_keep_times_those_that_reached_it_at_least_one():
    assert quotas(8, [0.25, 0.5, 1.0], 0.5) == [4, 2]
    assert quotas(5, [0.5, 1.0], 0.5) == [3]  # ceil(2.5)
    assert quotas(4, [0.25, 0.5, 1.0], 0.25) == [1, 1]
    assert quotas(1, [0.25, 0.5, 1.0], 0.5) == [1, 1]
    assert quotas(3, [1.0], 0.5) == []  # one rung: nobody is promoted, everybody stops there


class ScriptedPool:
    """Workers that answer from a table: job ``i`` at rung ``k`` measures ``table[i][k]`` (``None``:
    it fails there).  ``pick(n)`` chooses which of the ``n`` jobs under way completes next.  With
    ``workers``, at most that many train at once; the others queue, first come first served, and
    each result takes a second of the pool's clock."""

    def __init__(
        self,
        table: list[list[Optional[float]]],
        pick: Callable[[int], int] = lambda n: 0,
        workers: Optional[int] = None,
    ):
        self.table, self.pick, self.workers = table, pick, workers
        self.running: list[tuple[int, int]] = []  # (job, rung) in the order workers took them
        self.queue: list[tuple[int, int, float]] = []  # (job, rung, queued at)
        self.log: list[tuple[str, int, int]] = []  # ("submit" | "result", job, rung)
        self.steps: dict[int, int] = {}  # training steps each job was given, all rungs
        self.clock = 0.0
        self._taken: list[Taken] = []

    @property
    def pending(self) -> int:
        return len(self.running) + len(self.queue)

    def submit(self, key, config, start, cpu_budget_s) -> None:
        rung = sum(1 for event, job, _ in self.log if event == "submit" and job == key)
        self.queue.append((key, rung, self.clock))
        self.log.append(("submit", key, rung))
        self.steps[key] = self.steps.get(key, 0) + config["train"]["steps"]
        self._take()

    def _take(self) -> None:
        while self.queue and (self.workers is None or len(self.running) < self.workers):
            job, rung, queued = self.queue.pop(0)
            self.running.append((job, rung))
            self._taken.append(Taken(job, self.clock, self.clock - queued))

    def taken(self) -> list[Taken]:
        out, self._taken = self._taken, []
        return out

    def next_result(self) -> tuple[int, TrainResult]:
        job, rung = self.running.pop(self.pick(len(self.running)) % len(self.running))
        self.clock += 1.0
        self.log.append(("result", job, rung))
        self._take()
        fitness = self.table[job][rung]
        if fitness is None:
            return job, TrainResult.failure("diverged")
        return job, TrainResult(fitness=fitness, cpu_time=1.0, wall_time=1.0, state=TrainState(model={}))


class StopBook:
    """A :class:`~hybridopt.search.halving.RungListener` that notes where each job stopped."""

    def __init__(self):
        self.stops: dict[int, int] = {}  # job -> the last rung it completed

    def started(self, job: Job, at: float) -> str:
        assert job.run_id is None, "a job's run starts once"
        return f"run-{job.index}"

    def completed(self, job: Job, result: TrainResult) -> None:
        assert job.run_id == f"run-{job.index}", "a job's run exists before its first result"

    def stopped(self, job: Job) -> None:
        assert job.index not in self.stops, "a job stops once"
        self.stops[job.index] = job.rung

    def progressed(self, done: int, total: int) -> None:
        pass


def run_halving(table, rungs=(0.25, 0.5, 1.0), keep=0.5, pick=lambda n: 0) -> tuple[dict[int, int], ScriptedPool]:
    """Jobs ``0..len(table)-1`` through the rungs; returns where each stopped, and the pool."""
    cfg = load_config(CONFIGS / "smoke_search.yaml")  # 4 training steps a candidate
    jobs = [Job(i, [0.5], {}, cfg) for i in range(len(table))]
    pool, book = ScriptedPool(table, pick), StopBook()
    SuccessiveHalving(tuple(rungs), keep).run(jobs, pool, book)
    assert all(job.done for job in jobs) and pool.pending == 0
    return book.stops, pool


def test_the_best_half_goes_on_at_each_rung_and_training_steps_add_up_to_the_budget():
    table = [[0.1, 0.9, 0.5], [0.4, 0.3, 0.2], [0.8, 0.2, 0.9], [0.6, 0.7, 0.1]]
    stops, pool = run_halving(table)
    # rung 0: 2 of 4 go on (jobs 2 and 3: 0.8, 0.6); rung 1: 1 of 2 (job 3: 0.7 > 0.2); rung 2: job 3 stops there
    assert stops == {0: 0, 1: 0, 2: 1, 3: 2}
    # smoke_search trains 4 steps: rungs 0.25/0.5/1.0 give 1, 1 and 2 of them
    assert pool.steps == {0: 1, 1: 1, 2: 2, 3: 4}


def test_a_place_is_decided_as_soon_as_it_is_certain():
    # Results arrive in submission order.  After jobs 0, 1 and 2 (0.9, 0.8, 0.1) only job 3 is
    # pending: at most one can overtake job 0, so with two places it goes on at once, before job 3.
    table = [[0.9, 0.5, 0.5], [0.8, 0.4, 0.4], [0.1, 0.0, 0.0], [0.95, 0.6, 0.6]]
    stops, pool = run_halving(table)
    assert pool.log.index(("submit", 0, 1)) < pool.log.index(("result", 3, 0))
    assert pool.log.index(("submit", 0, 1)) > pool.log.index(("result", 2, 0))
    assert stops == {0: 1, 1: 0, 2: 0, 3: 2}  # job 1 (third of four) stops once job 3 arrives


def test_a_job_s_run_starts_when_a_worker_takes_it_and_its_time_queued_is_counted():
    # two workers, four jobs: jobs 2 and 3 wait in the queue until a worker is free (one result a
    # second); their runs start then, not when they were queued
    table = [[0.1, 0.9, 0.5], [0.4, 0.3, 0.2], [0.8, 0.2, 0.9], [0.6, 0.7, 0.1]]
    pool = ScriptedPool(table, workers=2)
    starts: dict[int, float] = {}

    class StartBook(StopBook):
        def started(self, job: Job, at: float) -> str:
            assert (job.index, 0) in pool.running and job.index not in starts, "a worker has it, the first time"
            starts[job.index] = at
            return super().started(job, at)

    cfg = load_config(CONFIGS / "smoke_search.yaml")
    jobs = [Job(i, [0.5], {}, cfg) for i in range(len(table))]
    SuccessiveHalving((0.25, 0.5, 1.0), 0.5).run(jobs, pool, StartBook())
    assert starts == {0: 0.0, 1: 0.0, 2: 1.0, 3: 2.0}
    # promoted jobs found a free worker at once: their only wait is their first rung's
    assert {j.index: j.queue_wait_s for j in jobs} == {0: 0.0, 1: 0.0, 2: 1.0, 3: 2.0}


def test_a_failed_job_stops_and_takes_no_place():
    table = [[None, 0.0, 0.0], [0.2, None, 0.0], [0.3, 0.5, 0.5], [0.1, 0.0, 0.0]]
    stops, _ = run_halving(table)
    # rung 0: job 0 failed; of the rest, jobs 2 and 1 go on; rung 1: job 1 fails, job 2 goes on
    assert stops == {0: 0, 1: 1, 2: 2, 3: 0}


def test_ties_go_to_the_lower_candidate_number():
    stops, _ = run_halving([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]], rungs=(0.5, 1.0), keep=0.5)
    assert stops == {0: 1, 1: 1, 2: 0}  # ceil(1.5) = 2 places: jobs 0 and 1


def reference_halving(table, rungs, keep) -> dict[int, int]:
    """Successive halving with a barrier at every rung, written plainly: each rung's survivors
    train it, failures stop, the ``quota`` best (ties: lower number) go on."""
    survivors, stops = list(range(len(table))), {}
    for k, m in enumerate([*quotas(len(table), list(rungs), keep), 0]):
        measured = [j for j in survivors if table[j][k] is not None]
        stops.update({j: k for j in survivors if table[j][k] is None})
        ranked = sorted(measured, key=lambda j: (-table[j][k], j))
        on = ranked[:m] if k < len(rungs) - 1 else []
        stops.update({j: k for j in ranked if j not in on})
        survivors = on
    return stops


fitness_or_failure = st.one_of(st.none(), st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]))


@settings(max_examples=150, deadline=None)
@given(
    table=st.lists(st.lists(fitness_or_failure, min_size=3, max_size=3), min_size=1, max_size=7),
    keep=st.sampled_from([0.25, 0.5, 0.75, 1.0]),
    order=st.lists(st.integers(min_value=0, max_value=100), min_size=30, max_size=30),
)
def test_any_arrival_order_gives_the_promotions_of_plain_successive_halving(table, keep, order):
    """Whichever job completes first, the promotions are those of a barrier at every rung."""
    choices = iter(order)
    stops, _ = run_halving(table, keep=keep, pick=lambda n: next(choices, 0))
    assert stops == reference_halving(table, (0.25, 0.5, 1.0), keep)
