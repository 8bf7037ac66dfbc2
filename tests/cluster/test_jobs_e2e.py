"""End to end: searches as Ray Jobs on a loopback head, as the README's cluster section runs them.

A head (``ray start --head``, dashboard and Jobs API on 127.0.0.1, the head's MLflow server as
the cluster's start commands launch it) runs in its own PID namespace with its own ``RAY_TMPDIR``,
ports (every one ``ray start`` takes) and store, so killing the namespace ends everything it
started; another Ray runs beside it on Ray's default ports the whole time, as a developer's own
would.  The head's jobs run the
``hybridopt`` installed in this interpreter's environment (no ``PYTHONPATH``), as a user's head
does.  From outside, the real ``hybridopt`` command line submits two smoke searches at once from
a local YAML the head has never seen, lists them, stops a third mid-way and resumes it into the same parent run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.cluster.ray_ports import DEFAULT_PORTS, DefaultRay, free_ports, head_ports, port_flags, service_ports
from tests.cluster.test_launcher_e2e import _healthy, _pidns_available, skip_unless_ci
from tests.conftest import CONFIGS, REPO

pytestmark = pytest.mark.slow

EXPERIMENT = "jobs_e2e"


class Head:
    """A head with every port of its own; ``ports`` replaces some of them (by ``ray start``'s flag)."""

    def __init__(self, ports: Optional[dict[str, int]] = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="hj", dir="/tmp"))  # short: Ray's socket paths
        self.ports = {**head_ports(), **(ports or {})}
        workers = (self.ports["min-worker-port"], self.ports["max-worker-port"])
        (mlflow,) = service_ports(1, avoid=(workers,))  # bound after Ray: not where Ray's servers bind
        self.address = f"http://127.0.0.1:{self.ports['dashboard-port']}"
        self.mlflow = f"http://127.0.0.1:{mlflow}"
        self.env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
            "RAY_TMPDIR": str(self.root),
            "HYBRIDOPT_STORE": str(self.root / "store"),
            "HYBRIDOPT_MLFLOW_PORT": str(mlflow),
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        for var in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
            self.env.pop(var, None)
        script = (
            f"ray start --head {port_flags(self.ports)} --node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1 "
            "--num-cpus=2 --disable-usage-stats >/dev/null && "
            "python -m hybridopt.entry.cluster mlflow && exec sleep infinity"
        )
        self.log = open(self.root / "head.log", "wb")  # noqa: SIM115 - closed in stop()
        ns = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
        self.proc = subprocess.Popen(
            [*ns, "bash", "-c", script], env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("the head exited:\n" + (self.root / "head.log").read_text()[-3000:])
            if _healthy(self.mlflow) and self._jobs_api():
                return
            time.sleep(1.0)
        raise AssertionError("the head did not come up:\n" + (self.root / "head.log").read_text()[-3000:])

    def _jobs_api(self) -> bool:
        return cli(self, "jobs", "--address", self.address, timeout=60).returncode == 0

    def leftovers(self) -> list[str]:
        """Processes outside the namespace that still mention this head's directory."""
        out = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                with contextlib.suppress(OSError):
                    cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    if str(self.root) in cmd and "pytest" not in cmd:
                        out.append(f"{d}: {cmd[:200]}")
        return out

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the namespace's init dies, and every process in it
        self.proc.wait(timeout=30)
        self.log.close()


@contextlib.contextmanager
def running(h: Head):
    """``h`` up (its MLflow server and Jobs API answering) until the block ends; then stopped,
    with nothing of it left running."""
    try:
        h.wait_ready()
        yield h
    finally:
        h.stop()
        deadline = time.monotonic() + 30
        while h.leftovers() and time.monotonic() < deadline:
            time.sleep(0.5)
        left = h.leftovers()
        shutil.rmtree(h.root, ignore_errors=True)
        assert not left, f"left running: {left}"


@pytest.fixture(scope="module")
def head(default_ray: DefaultRay):
    if not _pidns_available():
        skip_unless_ci("needs PID namespaces (unshare) to run a head that stops with everything it started")
    with running(Head()) as h:
        yield h


def cli(head: Head, *args: str, timeout: float = 300, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in head.env.items() if k not in ("HYBRIDOPT_STORE", "HYBRIDOPT_MLFLOW_PORT")} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "hybridopt", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def submitted(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 0, p.stdout + p.stderr
    return re.search(r"submitted (\S+) to", p.stdout).group(1)


def status(head: Head, job: str) -> str:
    from hybridopt.entry.service import connect

    return str(connect(head.address)[0].get_job_status(job).value)


def wait_job(head: Head, job: str, want: str = "SUCCEEDED", timeout: float = 420) -> None:
    deadline = time.monotonic() + timeout
    while (s := status(head, job)) not in ("SUCCEEDED", "FAILED", "STOPPED") and time.monotonic() < deadline:
        time.sleep(2.0)
    if s != want:
        logs = cli(head, "logs", job, "--address", head.address).stdout
        raise AssertionError(f"job {job} is {s}, not {want}; its log ends:\n{logs[-3000:]}")


def searches(head: Head) -> tuple[MlflowClient, list, list]:
    client = MlflowClient(head.mlflow)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], max_results=1000) if exp else []
    parents = [r for r in runs if r.data.tags.get("hybridopt.kind") == "search"]
    children = [r for r in runs if r.data.tags.get("hybridopt.kind") == "candidate"]
    return client, parents, children


def parent_of(head: Head, job: str) -> Optional[str]:
    found = re.findall(r"search run ([0-9a-f]{32}) ", cli(head, "logs", job, "--address", head.address).stdout)
    return found[-1] if found else None


def test_searches_submitted_listed_stopped_and_resumed_as_jobs(head: Head, tmp_path: Path):
    cfg = yaml.safe_load((CONFIGS / "smoke_search.yaml").read_text())
    cfg["experiment"] = EXPERIMENT
    mine = tmp_path / "my_search.yaml"  # a local YAML the head has never seen
    mine.write_text(yaml.safe_dump(cfg))
    base = [str(mine), "--address", head.address, "--set", "search.max_concurrent=1"]

    # bad input: one line, exit 2, nothing submitted
    (dead,) = free_ports(1)
    p = cli(head, "submit", *base, "--address", f"http://127.0.0.1:{dead}")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "cannot reach the Ray Jobs API" in p.stderr, p.stderr
    p = cli(head, "submit", *base, "--set", "search.population=-3")
    assert p.returncode == 2 and "search.population" in p.stderr, p.stderr
    p = cli(head, "stop", "no-such-job", "--address", head.address)
    assert p.returncode == 2 and "no job 'no-such-job'" in p.stderr, p.stderr
    assert "no-such" not in cli(head, "jobs", "--address", head.address).stdout

    # two searches at once, each capped at one candidate at a time on the 2-CPU head
    first = submitted(cli(head, "submit", *base, "--seed", "1", "--wait", "0"))
    second = submitted(cli(head, "submit", *base, "--seed", "2", "--wait", "0"))
    wait_job(head, first)
    wait_job(head, second)
    client, parents, children = searches(head)
    assert len(parents) == 2 and {p.info.status for p in parents} == {"FINISHED"}
    ids = {parent_of(head, first), parent_of(head, second)}
    assert ids == {p.info.run_id for p in parents}
    for parent in parents:
        mine_ = [c for c in children if c.data.tags["mlflow.parentRunId"] == parent.info.run_id]
        assert len(mine_) == 8 and all(c.info.status == "FINISHED" for c in mine_)  # 4 + 2 children + 2 elites
    listed = cli(head, "jobs", "--address", head.address, "--tracking-uri", head.mlflow)
    assert listed.returncode == 0, listed.stderr
    for job in (first, second):
        (row,) = [line for line in listed.stdout.splitlines() if job in line]
        assert "SUCCEEDED" in row and parent_of(head, job) in row and "my_search.yaml" in row

    followed = cli(head, "logs", first, "--follow", "--address", head.address, timeout=120)  # ended: returns
    assert followed.returncode == 0 and f"search run {parent_of(head, first)}" in followed.stdout

    # a third is stopped mid-way: its parent ends KILLED, nothing RUNNING, the checkpoint stays
    longer = [*base, "--seed", "3", "--set", "search.generations=6"]
    third = submitted(cli(head, "submit", *longer))
    parent = parent_of(head, third)
    assert parent is not None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        done = [c for c in searches(head)[2] if c.data.tags["mlflow.parentRunId"] == parent]
        if sum(c.info.status == "FINISHED" for c in done) >= 5:  # into generation 1
            break
        time.sleep(1.0)
    p = cli(head, "stop", third, "--address", head.address)
    assert p.returncode == 0 and "stopped" in p.stdout and "--resume" in p.stdout, p.stdout + p.stderr
    client = MlflowClient(head.mlflow)
    assert client.get_run(parent).info.status == "KILLED"
    assert client.get_run(parent).data.tags["hybridopt.failure"] == "terminated (SIGTERM)"
    before = [c for c in searches(head)[2] if c.data.tags["mlflow.parentRunId"] == parent]
    assert before and "RUNNING" not in {c.info.status for c in before}

    # ... and resumed into the same parent run, with no duplicate children
    again = cli(head, "submit", *longer, "--resume")
    resumed = submitted(again)
    assert f"parent run {parent}" in again.stdout, again.stdout
    wait_job(head, resumed)
    assert client.get_run(parent).info.status == "FINISHED"
    _, parents, children = searches(head)
    assert len(parents) == 3
    kids = [c for c in children if c.data.tags["mlflow.parentRunId"] == parent]
    keys = [(c.data.tags["hybridopt.generation"], c.data.tags["hybridopt.candidate"]) for c in kids]
    assert len(keys) == len(set(keys)) == 4 * 6 and {c.info.status for c in kids} == {"FINISHED"}


def test_a_task_from_the_users_own_module_searches_as_a_job(head: Head, tmp_path: Path):
    """The task of ``examples/my_task.py``, which nothing on the head knows: ``submit`` ships the
    one-file plugin with the job, and the job's driver and its Ray workers import it there."""
    cfg = yaml.safe_load((REPO / "examples" / "my_task_search.yaml").read_text())
    cfg["experiment"] = f"{EXPERIMENT}_plugin"
    mine = tmp_path / "my_task_search.yaml"
    mine.write_text(yaml.safe_dump(cfg))
    here = {"HYBRIDOPT_PLUGINS": "my_task", "PYTHONPATH": f"{REPO / 'examples'}{os.pathsep}{REPO}"}
    job = submitted(cli(head, "submit", str(mine), "--address", head.address, env=here))
    wait_job(head, job)
    client = MlflowClient(head.mlflow)
    exp = client.get_experiment_by_name(f"{EXPERIMENT}_plugin")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("hybridopt.kind") == "search"]
    children = [r for r in runs if r.data.tags.get("hybridopt.kind") == "candidate"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.params["task.name"] for c in children} == {"delayed_match"}
    assert len({c.data.params["task.rate_on"] for c in children}) > 1  # the gene on the task's own key


@pytest.mark.skip(
    reason="the premise is not certain with Ray 2.60: a head whose agent port another Ray holds "
    "sometimes keeps a job agent (its submissions then reach that other Ray's agent), so submit "
    "succeeds; the bounded wait and its one line are in hybridopt.entry.service.submit"
)
def test_submit_to_a_head_without_a_job_agent_says_so_in_one_line(default_ray: DefaultRay, tmp_path: Path):
    """A head whose dashboard agent cannot take its port (the other Ray's agent holds 52365) has
    no job agent: ``submit`` waits ``--agent-wait`` seconds for one, then says so in one line."""
    if not _pidns_available():
        skip_unless_ci("needs PID namespaces (unshare) to run a head that stops with everything it started")
    cfg = yaml.safe_load((CONFIGS / "smoke_search.yaml").read_text())
    cfg["experiment"] = EXPERIMENT
    mine = tmp_path / "my_search.yaml"
    mine.write_text(yaml.safe_dump(cfg))
    with running(Head({"dashboard-agent-listen-port": DEFAULT_PORTS[2]})) as h:
        started = time.monotonic()
        p = cli(h, "submit", str(mine), "--address", h.address, "--agent-wait", "5", timeout=120)
        took = time.monotonic() - started
        assert p.returncode == 2, p.stdout + p.stderr
        assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr
        assert "no job agent after 5 s" in p.stderr and "52365" in p.stderr, p.stderr
        assert took < 60, took  # bounded: five seconds of retries, not Ray's own
        assert "submitted" not in p.stdout
        p = cli(h, "submit", str(mine), "--address", h.address, "--agent-wait", "-1")
        assert p.returncode == 2 and p.stderr.count("\n") == 1 and "--agent-wait" in p.stderr, p.stderr
