"""The real ``hybridopt search`` in a subprocess: local Ray, a SQLite store, the smoke config."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import CONFIGS, REPO

pytestmark = pytest.mark.slow

SMOKE = str(CONFIGS / "smoke_search.yaml")
# population 4, elite 2: 4 initial candidates, then 2 children per generation
THREE_GENERATIONS = ["--set", "search.generations=3"]
# generation 0: the population; later ones: 2 children and the 2 elites training on
EXPECTED_CHILDREN = 4 + 4 + 4
RUNG_STEPS = {0: 1, 1: 2, 2: 4}  # rungs [0.25, 0.5, 1.0] of train.steps = 4


@pytest.fixture
def ray_tmp():
    """A private Ray temp dir; every process started under it is killed at teardown."""
    d = tempfile.mkdtemp(prefix="hr", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    yield d
    subprocess.run(["pkill", "-9", "-f", d], check=False)
    shutil.rmtree(d, ignore_errors=True)


def _env(ray_tmp: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def search(args, cwd: Path, ray_tmp: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hybridopt", "search", *args],
        cwd=cwd,
        env=_env(ray_tmp),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_search(args, cwd: Path, ray_tmp: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hybridopt", "search", *args],
        cwd=cwd,
        env=_env(ray_tmp),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # a shell that runs the tests in the background ignores SIGINT, and the child would inherit
        # that: Ctrl-C must reach the search as it does from a terminal
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def runs_of(store: str):
    client = MlflowClient(store)
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps, max_results=1000)
    parents = [r for r in runs if r.data.tags.get("hybridopt.kind") == "search"]
    children = [r for r in runs if r.data.tags.get("hybridopt.kind") == "candidate"]
    return client, parents, children


def wait_for(pred, timeout: float, what: str) -> None:
    t0 = time.time()
    while not pred():
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def best_genome(client: MlflowClient, parent_id: str) -> str:
    return client.get_run(parent_id).data.tags["hybridopt.best_genome"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted three-generation smoke search (shared by the tests below)."""
    d = tmp_path_factory.mktemp("reference")
    rt = tempfile.mkdtemp(prefix="hr", dir="/tmp")
    try:
        store = f"sqlite:///{d / 'm.db'}"
        p = search([SMOKE, *THREE_GENERATIONS, "--tracking-uri", store], d, rt)
        assert p.returncode == 0, p.stderr
    finally:
        subprocess.run(["pkill", "-9", "-f", rt], check=False)
        shutil.rmtree(rt, ignore_errors=True)
    (d / "stdout.txt").write_text(p.stdout)
    return d, store


def test_search_logs_parent_and_children(reference):
    _, store = reference
    client, parents, children = runs_of(store)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert len(children) == EXPECTED_CHILDREN
    for c in children:
        assert c.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert {"hybridopt.generation", "hybridopt.candidate"} <= set(c.data.tags)
        for proj in ("input", "recurrent", "readout"):  # a static projection's coefficients do not apply
            plastic = c.data.params[f"plasticity.{proj}.rule"] != "none"
            assert (f"plasticity.{proj}.modulation" in c.data.params) == plastic
        assert not any(k.split(".")[0] in ("es", "search", "ray", "tracking") for k in c.data.params)
        assert "fitness" in c.data.metrics and c.info.status == "FINISHED"
        rung = int(c.data.tags["hybridopt.rung"])
        assert len(client.get_metric_history(c.info.run_id, "train/loss")) == RUNG_STEPS[rung]
        rung_fitness = client.get_metric_history(c.info.run_id, "rung_fitness")
        assert sorted(m.step for m in rung_fitness) == list(range(rung + 1))
        assert max(rung_fitness, key=lambda m: m.step).value == c.data.metrics["fitness"]
        assert c.info.end_time - c.info.start_time >= 1000 * c.data.metrics["wall_time_s"] * 0.5  # created at dispatch
    # successive halving, every generation: 4 candidates, the best 2 to rung 1, the best of those to rung 2
    for g in range(3):
        rungs = sorted(
            int(c.data.tags["hybridopt.rung"]) for c in children if c.data.tags["hybridopt.generation"] == str(g)
        )
        assert rungs == [0, 0, 1, 2], (g, rungs)
        # promoted: the rung's best (ties to the lower candidate number)
        gen = [c for c in children if c.data.tags["hybridopt.generation"] == str(g)]
        first = {c.info.run_id: client.get_metric_history(c.info.run_id, "rung_fitness") for c in gen}
        r0 = sorted(
            gen,
            key=lambda c: (
                -min(first[c.info.run_id], key=lambda m: m.step).value,
                int(c.data.tags["hybridopt.candidate"]),
            ),
        )
        assert sorted(int(c.data.tags["hybridopt.rung"]) for c in r0[:2]) == [1, 2]
    best = [
        m.value for m in sorted(client.get_metric_history(parent.info.run_id, "best_fitness"), key=lambda m: m.step)
    ]
    assert len(best) == 3 and all(a <= b for a, b in zip(best, best[1:]))
    assert best[-1] == max(c.data.metrics["fitness"] for c in children)
    assert "mean_fitness" in parent.data.metrics
    assert parent.data.metrics["candidates"] == len(children)  # every generation's, not the last one's
    # lineage: generation 0 trains from scratch; later children start from a finished earlier candidate's
    # trained state, their curves going on from its step, their budget counting its CPU seconds
    by_id = {c.info.run_id: c for c in children}
    for c in children:
        gen, tags, m = int(c.data.tags["hybridopt.generation"]), c.data.tags, c.data.metrics
        losses = client.get_metric_history(c.info.run_id, "train/loss")
        n = RUNG_STEPS[int(tags["hybridopt.rung"])]
        if gen == 0:
            assert "hybridopt.inherited_from" not in tags
            assert m["budget_cpu_s"] == pytest.approx(m["cpu_time_s"])
            assert sorted(x.step for x in losses) == list(range(1, n + 1))
            continue
        src = by_id[tags["hybridopt.inherited_from"]]
        assert int(src.data.tags["hybridopt.generation"]) == gen - 1 and src.info.status == "FINISHED"
        assert tags["hybridopt.inherited"].split(",")[0] == "weights"
        assert m["budget_cpu_s"] == pytest.approx(src.data.metrics["budget_cpu_s"] + m["cpu_time_s"])
        first = int(src.data.metrics["train_steps"]) + 1
        assert sorted(x.step for x in losses) == list(range(first, first + n))
    # the elites trained on: two candidates of each later generation carry on a previous member's genome
    for g in (1, 2):
        gen = [c for c in children if c.data.tags["hybridopt.generation"] == str(g)]
        same = [
            c
            for c in gen
            if by_id[c.data.tags["hybridopt.inherited_from"]].data.tags["hybridopt.genome"]
            == c.data.tags["hybridopt.genome"]
        ]
        assert len(same) >= 2
    cpu = [x.value for x in sorted(client.get_metric_history(parent.info.run_id, "cpu_s"), key=lambda x: x.step)]
    assert len(cpu) == 3 and cpu[-1] == pytest.approx(sum(c.data.metrics["cpu_time_s"] for c in children))
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"weights.pt", "best_genome.yaml", "config.yaml"} <= arts


def _children_in_store(db: Path, generation: int, status: Optional[str] = None) -> int:
    """Child runs of ``generation`` in the SQLite store a running search writes (read-only peek)."""
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            rows = con.execute(
                "SELECT r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid"
                " WHERE t.key = 'hybridopt.generation' AND t.value = ?",
                (str(generation),),
            ).fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return 0
    return sum(status is None or r[0] == status for r in rows)


KILL_POINTS = {
    # generation 0 under way, nothing finished (before any generation's checkpoint)
    "generation 0, first candidate dispatched": lambda db: _children_in_store(db, 0) >= 1,
    # generation 0, some candidates finished and some running
    "generation 0, a candidate finished": lambda db: _children_in_store(db, 0, "FINISHED") >= 1,
    # generation 1 under way: after generation 0's metrics and checkpoint
    "generation 1 under way": lambda db: _children_in_store(db, 1) >= 1,
}


def test_a_search_shows_its_candidates_and_ends_with_figures_and_where_to_look(reference, tmp_path: Path):
    d, store = reference
    out = (d / "stdout.txt").read_text()
    client, (parent,), children = runs_of(store)
    # one line per candidate as it stops: generation, number, fitness, status
    lines = [ln for ln in out.splitlines() if ln[:1] == "g" and ln[4:6] == " c"]
    assert len(lines) == len(children), out
    for c in children:
        fit = f"{c.data.metrics['fitness']:.4f}"
        tag = f"g{int(c.data.tags['hybridopt.generation']):03d} c{int(c.data.tags['hybridopt.candidate']):03d}"
        assert any(ln.startswith(tag) and fit in ln and "finished" in ln for ln in lines), (tag, fit)
    assert "starting local Ray with 2 CPUs" in out
    assert f"mlflow ui --backend-store-uri {store}" in out and "checkpoint: " in out
    # the parent's figures and summary page, and its description
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    pngs = sorted(a for a in arts if a.endswith(".png"))
    assert len(pngs) >= 2 and "summary.html" in arts, arts
    for name in pngs:
        assert Path(client.download_artifacts(parent.info.run_id, name, str(tmp_path))).read_bytes()[:4] == b"\x89PNG"
    page = Path(client.download_artifacts(parent.info.run_id, "summary.html", str(tmp_path))).read_text()
    assert page.count("<svg") == 2 and parent.data.tags["hybridopt.best_genome"].split()[0] in page
    assert "Reproduce: `hybridopt search" in parent.data.tags["mlflow.note.content"]
    # the generation curves are the only series on the parent (no per-family counts)
    assert set(parent.data.metrics) == {
        "best_fitness", "mean_fitness", "failed", "cpu_s", "candidates", "candidates_in_generation", "fitness"
    }  # fmt: skip
    # hybridopt report: the ranked table from the store alone, and the same figures
    rep = subprocess.run(
        [sys.executable, "-m", "hybridopt", "report", "smoke_search", "--tracking-uri", store,
         "--out", str(tmp_path / "r"), "--csv", str(tmp_path / "t.csv")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert rep.returncode == 0, rep.stderr
    written = sorted(p.name.rsplit("__", 1)[1] for p in (tmp_path / "r").iterdir())
    assert written == sorted([*pngs, "summary.html"])
    import csv

    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert len(rows) == len(children)
    fits = [float(r["fitness"]) for r in rows]
    assert fits == sorted(fits, reverse=True) and fits[0] == pytest.approx(
        max(c.data.metrics["fitness"] for c in children), abs=1e-4
    )
    assert rows[0]["candidate"] in rep.stdout and "genes that differ" in rep.stdout
    # a name the store does not hold: one line, exit 2
    bad = subprocess.run(
        [sys.executable, "-m", "hybridopt", "report", "no_such_search", "--tracking-uri", store],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "no_such_search" in bad.stderr


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
    assert len(children) == len(ref_children) == EXPECTED_CHILDREN
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

    try:
        wait_for(kill_a_worker, 240, "a worker running a candidate")
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
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
    try:
        wait_for(lambda: _children_in_store(tmp_path / "m.db", 0) >= 1, 240, "a candidate under way")
        if how == "ctrl-c":  # the terminal's SIGINT reaches the whole process group
            os.killpg(proc.pid, signal.SIGINT)
        else:  # `kill PID`, or a job manager stopping the driver: the driver alone
            os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    _, parents, children = runs_of(store)
    assert parents[0].info.status == "KILLED"
    assert "SystemExit" not in err and "Traceback" not in err
    # runs exist from dispatch: the candidates under way when Ctrl-C came end KILLED, none RUNNING
    statuses = {c.info.status for c in children}
    assert "KILLED" in statuses and "RUNNING" not in statuses


def test_without_inheritance_every_candidate_trains_from_scratch(tmp_path: Path, store: str, ray_tmp: str):
    p = search([SMOKE, "--tracking-uri", store, "--set", "search.inheritance=none"], tmp_path, ray_tmp)
    assert p.returncode == 0, p.stderr
    client, parents, children = runs_of(store)
    assert len(parents) == 1 and {int(c.data.tags["hybridopt.generation"]) for c in children} == {0, 1}
    for c in children:
        assert "hybridopt.inherited_from" not in c.data.tags
        assert c.data.metrics["budget_cpu_s"] == pytest.approx(c.data.metrics["cpu_time_s"])
        assert min(x.step for x in client.get_metric_history(c.info.run_id, "train/loss")) == 1
        assert not client.list_artifacts(c.info.run_id)  # no trained state is kept for children


def test_a_family_registered_by_a_plugin_module_trains_in_a_search(tmp_path: Path, store: str, ray_tmp: str):
    # the tests' own family, loaded the way a user loads theirs: the driver and every worker import it
    import yaml

    cfg = yaml.safe_load(Path(SMOKE).read_text())
    cfg["search"]["genes"]["plasticity.input.rule"] = {"choices": ["anti_hebbian", "hebbian"]}
    (tmp_path / "own.yaml").write_text(yaml.safe_dump(cfg))
    args = [str(tmp_path / "own.yaml"), "--tracking-uri", store, "--set", "search.generations=1",
            "--set", f"search.checkpoint={tmp_path}/c"]  # fmt: skip
    p = search(args, tmp_path, ray_tmp)
    assert p.returncode == 2 and "unknown rule 'anti_hebbian'" in p.stderr  # not registered without the plugin
    env = {**_env(ray_tmp), "HYBRIDOPT_PLUGINS": "tests.extra_family"}
    p = subprocess.run([sys.executable, "-m", "hybridopt", "search", *args], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr
    client, _, children = runs_of(store)
    assert children and all(c.info.status == "FINISHED" for c in children)
    anti = [c for c in children if c.data.params["plasticity.input.rule"] == "anti_hebbian"]
    assert anti, "no candidate drew the registered family"
    for c in anti:  # it trained: its own coefficient is in the state it kept
        path = client.download_artifacts(c.info.run_id, "state.pt", str(tmp_path / c.info.run_id))
        import torch

        model = torch.load(path, weights_only=True)["model"]
        assert "projections.input.coeffs.k" in model and torch.isfinite(model["projections.input.coeffs.k"])


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
