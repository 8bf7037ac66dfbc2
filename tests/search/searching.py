"""Running the real ``hybridopt search`` in a subprocess for the end-to-end tests: local Ray in a
private temp dir, a SQLite store, the smoke config; and reading back what it stored."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import CONFIGS, REPO

SMOKE = str(CONFIGS / "smoke_search.yaml")
# population 4, elite 2: 4 initial candidates, then 2 children per generation
THREE_GENERATIONS = ["--set", "search.generations=3"]
# generation 0: the population; later ones: 2 children and the 2 elites training on
EXPECTED_CHILDREN = 4 + 4 + 4
RUNG_STEPS = {0: 1, 1: 2, 2: 4}  # rungs [0.25, 0.5, 1.0] of train.steps = 4


def smoke_raw() -> dict:
    """The smoke search's config as its YAML gives it, to change before parsing."""
    return yaml.safe_load(Path(SMOKE).read_text())


def search_env(ray_tmp: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def search(args, cwd: Path, ray_tmp: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hybridopt", "search", *args],
        cwd=cwd,
        env=search_env(ray_tmp),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_search(args, cwd: Path, ray_tmp: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hybridopt", "search", *args],
        cwd=cwd,
        env=search_env(ray_tmp),
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


def children_in_store(db: Path, generation: int, status: Optional[str] = None) -> int:
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


def stderr_after(proc: subprocess.Popen, act: Callable[[], None], timeout: float) -> str:
    """``act()`` on a running search (it waits for a moment of it and does something then), then
    the search's stderr once it has ended; its process group is killed should it outlive that."""
    try:
        act()
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return err
