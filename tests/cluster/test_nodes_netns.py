"""Several nodes on one machine: a Ray head and two worker nodes, each in a network namespace of
its own, joined by a bridge on a private subnet that exists only inside those namespaces.

The bridge lives in a fourth namespace (the "switch"); each node's end of its link is in the
node's namespace, so nothing is added to the machine's own network and every Ray port is the
namespace's own.  Each node's Ray runs in a PID namespace of its own too (``ray start --block``
as its init): deleting the namespaces and killing those inits ends everything the test started.
The real ``hybridopt search --address HEAD:6379`` runs on the head, whose Ray offers no CPU, so
every candidate trains on a worker node; each child run records the node that trained it
(``hybridopt.node``), and ``hybridopt report`` shows it.  Then a worker node is killed in the
middle of a search, and the head in the middle of another, which ``--resume`` finishes: each ends
as the undisturbed search did.
"""

from __future__ import annotations

import contextlib
import csv
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.cluster.test_launcher_e2e import skip_unless_ci
from tests.conftest import CONFIGS, REPO
from tests.search.searching import best_genome, children_in_store, runs_of, wait_for

pytestmark = pytest.mark.slow

GCS_PORT = 6379  # Ray's default: the namespaces' ports are their own


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _netns_available() -> str:
    """Why network namespaces cannot be made here ("" when they can)."""
    if os.name != "posix" or os.geteuid() != 0:
        return "needs root to make network namespaces"
    if not shutil.which("ip") or not shutil.which("unshare"):
        return "needs ip (iproute2) and unshare"
    name = f"hybprobe{uuid.uuid4().hex[:6]}"
    try:
        _ip("netns", "add", name)
    except (subprocess.CalledProcessError, OSError) as e:
        return f"cannot make a network namespace: {getattr(e, 'stderr', b'') or e}"
    _ip("netns", "del", name)
    return ""


class Nodes:
    """The switch namespace with its bridge, and one namespace a node: ``head``, ``a``, ``b``."""

    ROLES = ("head", "a", "b")

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.root = Path(tempfile.mkdtemp(prefix="hn", dir="/tmp"))  # short: Ray's socket paths
        self.ns = {role: f"hyb{tag}{role}" for role in ("sw", *self.ROLES)}
        net = f"10.{random.randrange(64, 250)}.{random.randrange(1, 250)}"
        self.addr = {role: f"{net}.{i}" for i, role in enumerate(self.ROLES, start=1)}
        self.procs: dict[str, subprocess.Popen] = {}
        self.made: list[str] = []

    def up(self) -> None:
        for name in self.ns.values():
            _ip("netns", "add", name)
            self.made.append(name)
            _ip("-n", name, "link", "set", "lo", "up")
        sw = self.ns["sw"]
        _ip("-n", sw, "link", "add", "br0", "type", "bridge")
        _ip("-n", sw, "link", "set", "br0", "up")
        for role in self.ROLES:
            ns, port = self.ns[role], f"p{role}"
            _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", sw)
            _ip("-n", ns, "addr", "add", f"{self.addr[role]}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", sw, "link", "set", port, "master", "br0", "up")

    def env(self, role: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
        env.update(
            PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
            PYTHONPATH=str(REPO),
            RAY_TMPDIR=str(self.root / role),
            RAY_USAGE_STATS_ENABLED="0",
            # the cluster's private network is the test's own: no token between its nodes (else the
            # head makes one the worker nodes would have to be given)
            RAY_AUTH_MODE="disabled",
        )
        return env

    def start_ray(self, role: str) -> None:
        (self.root / role).mkdir(exist_ok=True)
        if role == "head":
            how = f"--head --port={GCS_PORT} --num-cpus=0 --include-dashboard=false"
        else:
            how = f"--address={self.addr['head']}:{GCS_PORT} --num-cpus=1"
        cmd = f"exec ray start {how} --node-ip-address={self.addr[role]} --disable-usage-stats --block"
        ns = ["ip", "netns", "exec", self.ns[role], "unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
        log = open(self.root / f"{role}.log", "ab")  # noqa: SIM115 - the child holds it
        self.procs[role] = subprocess.Popen(
            [*ns, "bash", "-c", cmd], env=self.env(role), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    def run(self, role: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
        """``args`` in node ``role``'s network namespace, from the repository."""
        return subprocess.run(
            ["ip", "netns", "exec", self.ns[role], *args],
            env=self.env(role),
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def wait_cpus(self, cpus: int, timeout: float = 360.0) -> None:
        """Until the cluster offers ``cpus`` CPUs.  A node whose ``ray start`` gave up is started
        again: Ray waits 30 s for a new raylet to register, which a loaded machine can exceed."""
        probe = (
            "import ray, sys, time\n"
            f"ray.init(address='{self.addr['head']}:{GCS_PORT}', logging_level='ERROR', log_to_driver=False)\n"
            "deadline = time.monotonic() + 20\n"
            f"while ray.cluster_resources().get('CPU', 0) < {cpus} and time.monotonic() < deadline:\n"
            "    time.sleep(1)\n"
            f"sys.exit(0 if ray.cluster_resources().get('CPU', 0) >= {cpus} else 1)\n"
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for role, proc in list(self.procs.items()):
                if proc.poll() is not None:
                    self.start_ray(role)
            p = self.run("head", [sys.executable, "-c", probe], 120)
            if p.returncode == 0:
                return
        logs = "\n".join(f"--- {r}:\n{self.log(r)}" for r in self.ROLES)
        raise AssertionError(f"the cluster has not {cpus} CPUs:\n{p.stderr[-2000:]}\n{logs}")

    def search(self, store: Path, *extra: str) -> list[str]:
        """``hybridopt search`` on the head: the smoke search through this cluster, into ``store``."""
        return [sys.executable, "-m", "hybridopt", "search", str(CONFIGS / "smoke_search.yaml"),
                "--address", f"{self.addr['head']}:{GCS_PORT}", "--tracking-uri", f"sqlite:///{store}",
                "--set", f"search.checkpoint={store.with_suffix('.ckpt')}", *extra]  # fmt: skip

    def start(self, role: str, args: list[str]) -> subprocess.Popen:
        """``args`` in node ``role``'s namespace, in the background (a session of its own)."""
        log = open(self.root / f"{role}-cmd.log", "ab")  # noqa: SIM115 - the child holds it
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns[role], *args], env=self.env(role), cwd=self.root,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        log.close()
        return proc

    def kill(self, role: str) -> None:
        """The node dies at once: its PID namespace's init, and with it every process of its Ray."""
        proc = self.procs.pop(role)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def log(self, role: str) -> str:
        with contextlib.suppress(OSError):
            return (self.root / f"{role}.log").read_text(errors="replace")[-1500:]
        return ""

    def down(self) -> None:
        for p in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)  # the PID namespace's init, and all in it
        for p in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=30)
        for name in reversed(self.made):
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", name)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def nodes(default_ray):  # another Ray on the machine's default ports, beside the test's nodes
    why = _netns_available()
    if why:
        skip_unless_ci(why)
    n = Nodes()
    try:
        n.up()
        for role in Nodes.ROLES:
            n.start_ray(role)
        n.wait_cpus(2)
        yield n
    finally:
        n.down()


def _trained_on_both_workers(nodes: Nodes, db: Path) -> None:
    """Every child run names the node(s) that trained it, the head (no CPU) never, both workers
    some; ``hybridopt report`` lists them."""
    store = f"sqlite:///{db}"
    _, _, children = runs_of(store)
    assert {c.info.status for c in children} == {"FINISHED"}
    tags = [c.data.tags.get("hybridopt.node", "") for c in children]
    assert all(tags), tags
    trained_on = {node for tag in tags for node in tag.split(",")}
    assert trained_on == {nodes.addr["a"], nodes.addr["b"]}, trained_on
    table = nodes.root / "candidates.csv"
    report = subprocess.run(
        [sys.executable, "-m", "hybridopt", "report", "smoke_search", "--tracking-uri", store,
         "--out", str(nodes.root / "report"), "--csv", str(table)],
        env=nodes.env("head"), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    rows = list(csv.DictReader(table.open()))
    assert sorted(r["node"] for r in rows) == sorted(tags)


def _outcome(children) -> dict[tuple[str, str], tuple[float, str]]:
    """Each candidate's fitness and stopping rung, by (generation, candidate)."""
    return {
        (c.data.tags["hybridopt.generation"], c.data.tags["hybridopt.candidate"]): (
            c.data.metrics["fitness"],
            c.data.tags["hybridopt.rung"],
        )
        for c in children
    }


def _same_search(store: Path, reference: Path) -> None:
    """One finished parent run whose candidates are the reference's, each once, none left RUNNING,
    with the same fitnesses and the same best."""
    client, parents, children = runs_of(f"sqlite:///{store}")
    ref_client, ref_parents, ref_children = runs_of(f"sqlite:///{reference}")
    assert len(parents) == 1 and client.get_run(parents[0].info.run_id).info.status == "FINISHED"
    keys = [(c.data.tags["hybridopt.generation"], c.data.tags["hybridopt.candidate"]) for c in children]
    assert len(keys) == len(set(keys)) == len(ref_children)  # no duplicate, no orphan
    assert {c.info.status for c in children} == {"FINISHED"}  # nothing left RUNNING
    assert _outcome(children) == _outcome(ref_children)
    assert best_genome(client, parents[0].info.run_id) == best_genome(ref_client, ref_parents[0].info.run_id)


def test_a_search_survives_losing_a_worker_node_and_resumes_after_losing_the_head(nodes: Nodes):
    # the search runs on the head (which offers no CPU): both worker nodes train its candidates
    # candidates budgeted in steps (no CPU clock): the same search wherever and whenever it runs
    budget = ["--set", "train.steps=40"]
    reference = nodes.root / "undisturbed.db"
    p = nodes.run("head", [*nodes.search(reference, *budget)], timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    _trained_on_both_workers(nodes, reference)

    # a worker node dies while both nodes train: the search goes on with the other
    lost = nodes.root / "lost-worker.db"
    proc = nodes.start("head", nodes.search(lost, *budget))
    try:
        wait_for(lambda: children_in_store(lost, 0) >= 2 or proc.poll() is not None, 300, "both nodes training")
        assert proc.poll() is None, nodes.log("head-cmd")
        nodes.kill("b")
        assert proc.wait(timeout=600) == 0, (nodes.root / "head-cmd.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    _same_search(lost, reference)
    client, (parent,), _ = runs_of(f"sqlite:///{lost}")
    assert client.get_run(parent.info.run_id).data.metrics["workers_lost"] >= 1  # the node's worker was lost

    # the head dies (its Ray and the search with it) in generation 1; restarted, --resume goes on
    restarted = nodes.root / "lost-head.db"
    proc = nodes.start("head", nodes.search(restarted, *budget))
    try:
        wait_for(lambda: children_in_store(restarted, 1) >= 1 or proc.poll() is not None, 300, "generation 1")
        assert proc.poll() is None, nodes.log("head-cmd")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    for role in ("head", "a"):  # the worker node's Ray ends with its head's: both start again
        nodes.kill(role)
    for role in ("head", "a"):
        nodes.start_ray(role)
    nodes.wait_cpus(1)
    p = nodes.run("head", [*nodes.search(restarted, *budget), "--resume"], timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    _same_search(restarted, reference)
