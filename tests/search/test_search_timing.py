"""What a search's runs say about time and place: a candidate's child run starts when a worker
takes it, not while it waits in the pool's queue, its time queued is its own metric, and it
names the node that trained it (``hybridopt report`` shows it).

A real smoke search on one worker slot (``search.max_concurrent=1``), with the tests' held task
(:mod:`tests.held_task`): the first candidate is held mid-training while the other three wait
in the queue, for as long as the test decides."""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.search.searching import SMOKE, children_in_store, runs_of, search_env, wait_for

pytestmark = pytest.mark.slow

HOLD_S = 3.0  # how long the first candidate is held: the others' wait, at least


def test_a_child_run_starts_when_a_worker_takes_it_and_logs_its_time_queued(tmp_path: Path, ray_tmp: str):
    db = tmp_path / "m.db"
    hold = tmp_path / "hold"
    hold.touch()
    env = {**search_env(ray_tmp), "HYBRIDOPT_PLUGINS": "tests.held_task", "HYBRIDOPT_TEST_HOLD": str(hold)}
    args = [SMOKE, "--tracking-uri", f"sqlite:///{db}", "--set", "search.max_concurrent=1",
            "--set", "search.generations=1", "--set", f"search.checkpoint={tmp_path}/c"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "hybridopt", "search", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for(lambda: Path(f"{hold}.held").exists() or proc.poll() is not None, 240, "a worker held in training")
        assert proc.poll() is None, proc.communicate()[1]
        # one candidate trains (held), three are queued: one child run, and it is RUNNING
        time.sleep(HOLD_S)
        assert children_in_store(db, 0) == 1 and children_in_store(db, 0, "RUNNING") == 1
        released = time.time()
        hold.unlink()
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    _, parents, children = runs_of(f"sqlite:///{db}")
    assert len(parents) == 1 and len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    by_index = {int(c.data.tags["hybridopt.candidate"]): c for c in children}
    first = by_index.pop(0)
    # the first candidate found the worker free; its run started as it was queued
    assert first.data.metrics["queue_wait_s"] < 1.0
    assert first.info.start_time <= 1000 * released - 1000 * HOLD_S
    for c in by_index.values():
        # the others could only be taken once the first had been released: their runs start then,
        # and they waited at least as long as it was held
        assert c.info.start_time >= 1000 * released, (c.info.start_time, released)
        assert c.data.metrics["queue_wait_s"] >= HOLD_S
        assert c.info.end_time - c.info.start_time >= 1000 * c.data.metrics["wall_time_s"]
    # one machine, one node: every run names it, and the report's table has it
    nodes = {c.data.tags.get("hybridopt.node") for c in children}
    assert len(nodes) == 1 and all(nodes), nodes
    table = tmp_path / "candidates.csv"
    report = subprocess.run(
        [sys.executable, "-m", "hybridopt", "report", "smoke_search", "--tracking-uri", f"sqlite:///{db}",
         "--out", str(tmp_path / "report"), "--csv", str(table)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    assert {r["node"] for r in csv.DictReader(table.open())} == nodes
