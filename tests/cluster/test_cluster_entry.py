"""The cluster entry point without a cluster: config lookup, the venv re-exec of
cluster/submit_search.py, and the head's MLflow server, which stops when Ray stops."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hybridopt.entry.cluster import ClusterEntryError, ensure_mlflow_server, main, resolve_config

REPO = Path(__file__).resolve().parents[2]
SUBMIT = REPO / "cluster" / "submit_search.py"


def test_config_is_found_as_given_or_in_the_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "project"
    (project / "configs").mkdir(parents=True)
    shipped = project / "configs" / "a.yaml"
    shipped.write_text("x: 1\n")
    elsewhere = tmp_path / "b.yaml"
    elsewhere.write_text("x: 2\n")
    monkeypatch.chdir(tmp_path)
    assert resolve_config("configs/a.yaml", project) == shipped.resolve()
    assert resolve_config("b.yaml", project) == elsewhere.resolve()
    assert resolve_config(str(elsewhere), project) == elsewhere.resolve()
    with pytest.raises(ClusterEntryError, match="nope.yaml not found"):
        resolve_config("nope.yaml", project)


def test_a_missing_config_fails_in_one_line_before_joining_ray(tmp_path: Path, capsys) -> None:
    rc = main(["search", "nope.yaml", "--project", str(tmp_path), "--store", str(tmp_path / "s"), "--address", "x:1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("hybridopt-cluster: error: config nope.yaml not found") and err.count("\n") == 1
    assert not (tmp_path / "s").exists()  # nothing started, nothing written


def test_submit_script_reexecutes_with_the_venv_python(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    fake_python = venv / "bin" / "python"
    fake_python.write_text('#!/bin/sh\necho "venv python got: $*"\n')
    fake_python.chmod(0o755)
    env = {**os.environ, "HYBRIDOPT_VENV": str(venv)}
    done = subprocess.run(
        [sys.executable, str(SUBMIT), "configs/smoke_search.yaml", "--seed", "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"venv python got: {SUBMIT} configs/smoke_search.yaml --seed 3"


def test_submit_script_without_a_venv_runs_the_entry_point(tmp_path: Path) -> None:
    env = {**os.environ, "HYBRIDOPT_VENV": str(tmp_path / "absent")}
    done = subprocess.run([sys.executable, str(SUBMIT), "--help"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--mlflow-port" in done.stdout and "config" in done.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _supervisor_pid(store: Path) -> int:
    return json.loads((store / "mlflow-supervisor.pid").read_text())["pid"]


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] in (b"Z", b"X")
    except FileNotFoundError:
        return True


@pytest.mark.slow
def test_mlflow_server_is_reused_replaced_and_stopped_with_ray(tmp_path: Path) -> None:
    """One server per Ray instance on the head; it stops once Ray's GCS stops answering."""
    store = tmp_path / "runs"
    port = _free_port()
    gcs = socket.socket()  # stands in for Ray's GCS: the supervisor probes it
    gcs.bind(("127.0.0.1", 0))
    gcs.listen(16)

    def answer() -> None:
        with contextlib.suppress(OSError):
            while True:
                gcs.accept()[0].close()

    threading.Thread(target=answer, daemon=True).start()
    gcs_address = f"127.0.0.1:{gcs.getsockname()[1]}"
    supervisors: list[int] = []
    try:
        uri = ensure_mlflow_server(store, port, gcs_address, "node-a", timeout=120)
        assert uri == f"http://127.0.0.1:{port}" and _healthy(port)
        first = _supervisor_pid(store)
        supervisors.append(first)
        assert (store / "mlflow.db").exists()  # the SQLite store lives in the store directory

        assert ensure_mlflow_server(store, port, gcs_address, "node-a") == uri  # same Ray: reused
        assert _supervisor_pid(store) == first

        ensure_mlflow_server(store, port, gcs_address, "node-b", timeout=120)  # Ray restarted: replaced
        second = _supervisor_pid(store)
        supervisors.append(second)
        assert second != first and _gone(first) and _healthy(port)

        gcs.shutdown(socket.SHUT_RDWR)  # Ray stops
        gcs.close()
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and not (_gone(second) and not _healthy(port)):
            time.sleep(0.5)
        assert _gone(second) and not _healthy(port)
        assert not (store / "mlflow-supervisor.pid").exists()
    finally:
        gcs.close()
        for pid in supervisors:
            if not _gone(pid):
                os.kill(pid, signal.SIGTERM)
