"""A search under failure: a killed worker is retried, a diverging candidate is a FAILED child
and the search goes on, Ctrl-C or SIGTERM ends the runs as KILLED."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.search.searching import SMOKE, children_in_store, runs_of, search, start_search, stderr_after, wait_for

pytestmark = pytest.mark.slow


def test_a_killed_worker_is_retried_and_every_candidate_accounted_for(tmp_path: Path, store: str, ray_tmp: str):
    # Longer candidates (a few seconds each) so that one can be killed mid-training.
    args = [SMOKE, "--tracking-uri", store, "--set", "train.steps=150", "--set", f"search.checkpoint={tmp_path}/c"]
    proc = start_search(args, tmp_path, ray_tmp)
    killed = []

    def kill_a_worker() -> bool:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                env = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue
            if cmd.startswith(b"ray::CandidateWorker.train") and ray_tmp.encode() in env:
                os.kill(int(pid), signal.SIGKILL)
                killed.append(pid)
                return True
        return False

    err = stderr_after(proc, lambda: wait_for(kill_a_worker, 240, "a worker running a candidate"), 300)
    assert proc.returncode == 0, err
    _, parents, children = runs_of(store)
    assert killed and len(parents) == 1
    assert len(children) == 4 + 4
    assert all(c.info.status == "FINISHED" and "fitness" in c.data.metrics for c in children)


def test_a_failing_candidate_is_a_failed_child_and_the_search_goes_on(tmp_path: Path, store: str, ray_tmp: str):
    blow_up = ["plasticity.input.alpha_init=1e38", "plasticity.input.h_max=1e38", "plasticity.input.eta_init=1e38"]
    genes = "search.genes={plasticity.input.rule: {choices: [none, hebbian]}, train.lr: {low: 0.001, high: 0.01}}"
    args = [SMOKE, "--tracking-uri", store, "--set", genes, "--set", f"search.checkpoint={tmp_path}/c"]
    for b in blow_up:
        args += ["--set", b]
    p = search(args, tmp_path, ray_tmp)
    assert p.returncode == 0, p.stderr
    _, parents, children = runs_of(store)
    failed = [c for c in children if c.info.status == "FAILED"]
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert len(children) == 4 + 4 and failed and finished
    by_id = {c.info.run_id: c for c in children}
    for c in failed:
        assert c.data.params["plasticity.input.rule"] == "hebbian"
        # at its first step: 0, or where the state it inherited stopped
        src = c.data.tags.get("hybridopt.inherited_from")
        first = int(by_id[src].data.metrics["train_steps"]) if src else 0
        assert f"non-finite gradient at step {first} " in c.data.tags["hybridopt.failure"]
        assert "fitness" not in c.data.metrics
    assert parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["hybridopt.best_genome"].startswith("input=none")


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_ends_the_search_run_as_killed(how: str, tmp_path: Path, store: str, ray_tmp: str):
    ckpt = tmp_path / "c.ckpt"
    args = [SMOKE, "--tracking-uri", store, "--set", "train.steps=150", "--set", f"search.checkpoint={ckpt}"]
    proc = start_search(args, tmp_path, ray_tmp)

    def stop_it() -> None:
        wait_for(lambda: children_in_store(tmp_path / "m.db", 0) >= 1, 240, "a candidate under way")
        if how == "ctrl-c":  # the terminal's SIGINT reaches the whole process group
            os.killpg(proc.pid, signal.SIGINT)
        else:  # `kill PID`, or a job manager stopping the driver: the driver alone
            os.kill(proc.pid, signal.SIGTERM)

    err = stderr_after(proc, stop_it, 120)
    assert proc.returncode == 130, err
    _, parents, children = runs_of(store)
    assert parents[0].info.status == "KILLED"
    assert "SystemExit" not in err and "Traceback" not in err
    # runs exist from dispatch: the candidates under way when Ctrl-C came end KILLED, none RUNNING
    statuses = {c.info.status for c in children}
    assert "KILLED" in statuses and "RUNNING" not in statuses
