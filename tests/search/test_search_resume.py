"""Resuming a search: after SIGKILL at any moment it continues the same parent run and ends as an
uninterrupted one would; a bad checkpoint is refused; a finished search can train its best on."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.search import searching
from tests.search.searching import SMOKE, THREE_GENERATIONS, best_genome, runs_of, search, start_search, wait_for

pytestmark = pytest.mark.slow


KILL_POINTS = {
    # generation 0 under way, nothing finished (before any generation's checkpoint)
    "generation 0, first candidate dispatched": lambda db: searching.children_in_store(db, 0) >= 1,
    # generation 0, some candidates finished and some running
    "generation 0, a candidate finished": lambda db: searching.children_in_store(db, 0, "FINISHED") >= 1,
    # generation 1 under way: after generation 0's metrics and checkpoint
    "generation 1 under way": lambda db: searching.children_in_store(db, 1) >= 1,
}


@pytest.mark.parametrize("kill_point", list(KILL_POINTS))
def test_sigkill_then_resume_matches_an_uninterrupted_search(kill_point, reference, tmp_path: Path, ray_tmp: str):
    ref_dir, ref_store = reference
    db = tmp_path / "m.db"
    store = f"sqlite:///{db}"
    ckpt = tmp_path / "c.ckpt"
    args = [SMOKE, *THREE_GENERATIONS, "--tracking-uri", store, "--set", f"search.checkpoint={ckpt}"]
    proc = start_search(args, tmp_path, ray_tmp)
    try:
        wait_for(lambda: KILL_POINTS[kill_point](db) or proc.poll() is not None, 240, kill_point)
        assert proc.poll() is None, "the search ended before the kill point"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    subprocess.run(["pkill", "-9", "-f", ray_tmp], check=False)  # the killed driver's Ray goes too
    p = search([*args, "--resume"], tmp_path, ray_tmp)
    assert p.returncode == 0, p.stderr
    client, parents, children = runs_of(store)
    ref_client, ref_parents, ref_children = runs_of(ref_store)
    assert len(parents) == 1  # the same parent run, continued
    assert len(children) == len(ref_children) == searching.EXPECTED_CHILDREN
    keys = sorted((c.data.tags["hybridopt.generation"], c.data.tags["hybridopt.candidate"]) for c in children)
    assert len(set(keys)) == len(keys)  # nothing re-logged, nothing orphaned
    assert {c.info.status for c in children} == {"FINISHED"}  # nothing left RUNNING

    # the same search: every candidate's fitness and stopping rung as in the uninterrupted one
    def outcome(runs):
        return {
            (c.data.tags["hybridopt.generation"], c.data.tags["hybridopt.candidate"]): (
                c.data.metrics["fitness"],
                c.data.tags["hybridopt.rung"],
            )
            for c in runs
        }

    assert outcome(children) == outcome(ref_children)
    assert best_genome(client, parents[0].info.run_id) == best_genome(ref_client, ref_parents[0].info.run_id)
    parent = client.get_run(parents[0].info.run_id)
    assert parent.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(parent.info.run_id, "best_fitness")) == [0, 1, 2]


def test_resume_refuses_a_mismatched_or_corrupt_checkpoint(tmp_path: Path, store: str, ray_tmp: str):
    ckpt = tmp_path / "c.ckpt"
    ckpt.write_bytes(b"garbage")
    p = search([SMOKE, "--tracking-uri", store, "--set", f"search.checkpoint={ckpt}", "--resume"], tmp_path, ray_tmp)
    assert p.returncode == 2 and "is not a search checkpoint" in p.stderr and "Traceback" not in p.stderr
    p = search(
        [SMOKE, "--tracking-uri", store, "--set", f"search.checkpoint={tmp_path / 'none'}", "--resume"],
        tmp_path,
        ray_tmp,
    )
    assert p.returncode == 2 and "no checkpoint" in p.stderr
    # a new search over an existing checkpoint asks which is meant
    p = search([SMOKE, "--tracking-uri", store, "--set", f"search.checkpoint={ckpt}"], tmp_path, ray_tmp)
    assert p.returncode == 2 and "--resume continues it, --fresh starts over" in p.stderr
    p = search([SMOKE, "--tracking-uri", store, "--resume", "--fresh"], tmp_path, ray_tmp)
    assert p.returncode == 2 and "not allowed with" in p.stderr
    assert not (tmp_path / "m.db").exists()  # none of these wrote to the store


def test_the_best_trains_on_after_the_last_generation_also_when_added_on_resume(
    tmp_path: Path, store: str, ray_tmp: str
):
    base = [SMOKE, "--tracking-uri", store, "--set", "search.generations=1", "--set", f"search.checkpoint={tmp_path}/c"]
    p = search(base, tmp_path, ray_tmp)
    assert p.returncode == 0, p.stderr
    client, _, before = runs_of(store)
    p = search([*base, "--set", "search.final_budget=2", "--resume"], tmp_path, ray_tmp)
    assert p.returncode == 0, p.stderr
    client, parents, children = runs_of(store)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    final = [c for c in children if c.data.tags["hybridopt.generation"] == "1"]
    assert len(final) == 1 and len(children) == len(before) + 1
    (f,) = final
    best = max(
        (c for c in before if c.info.status == "FINISHED"), key=lambda c: (c.data.metrics["fitness"], c.info.run_id)
    )
    assert f.data.tags["hybridopt.inherited_from"] == best.info.run_id
    assert f.data.tags["hybridopt.rung"] == "2" and f.info.status == "FINISHED"
    # it goes on from the best's own state for twice a candidate's budget (2 x 4 steps)
    done = max(x.step for x in client.get_metric_history(best.info.run_id, "train/loss"))
    steps = sorted(x.step for x in client.get_metric_history(f.info.run_id, "train/loss"))
    assert steps[0] == done + 1 and steps[-1] == done + 8
    assert f.data.metrics["budget_cpu_s"] > best.data.metrics["budget_cpu_s"]
    final_fit = client.get_metric_history(parents[0].info.run_id, "final_fitness")
    assert [(m.step, m.value) for m in final_fit] == [(1, pytest.approx(f.data.metrics["fitness"]))]
    cpu = {m.step: m.value for m in client.get_metric_history(parents[0].info.run_id, "cpu_s")}
    assert cpu[1] == pytest.approx(cpu[0] + f.data.metrics["cpu_time_s"], rel=1e-6)
    assert "g001 c000" in p.stdout  # its line, as every candidate has
