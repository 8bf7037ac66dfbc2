"""Ports for the Ray heads tests start, and another Ray on its default ports to run them beside.

A test head must not take any of Ray's default ports: a developer's local search, or any other
Ray on the machine, may hold them (a head whose dashboard agent cannot bind 52365 has no Jobs
agent, and every submission to it fails).  :func:`head_ports` gives a head every port
``ray start`` takes, each chosen free: the GCS, the dashboard, the dashboard agent's HTTP and
gRPC ports, the metrics export port, the runtime-env agent, the Ray client server, the node and
object managers, and a range of worker ports of its own, away from Ray's default worker range
(10002-19999) and from the kernel's ephemeral range that the other ports come from.

:class:`DefaultRay` is that other Ray: a bare ``ray start --head`` with nothing but its own
``RAY_TMPDIR``, in a PID namespace of its own so that stopping it ends everything it started.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# What a bare `ray start --head` listens on (Ray's defaults): GCS, dashboard, dashboard agent.
DEFAULT_PORTS = (6379, 8265, 52365)
WORKER_PORTS = 64  # a head's own worker port range: drivers, actors and idle workers of a 2-CPU head
_WORKER_RANGE = (20000, 32000)  # above Ray's default worker ports, below the ephemeral range


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 now (the kernel's choice, from its ephemeral range)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def service_ports(n: int, avoid: tuple[tuple[int, int], ...] = ()) -> list[int]:
    """``n`` distinct ports free now, for a server a test starts after Ray (MLflow, its UI),
    chosen outside the kernel's ephemeral range: a port from that range, free when chosen, can be
    taken by one of Ray's own servers (which bind ephemeral ports) before the test's server binds it.
    ``avoid``: inclusive ranges to leave out (a head's own worker ports, from the same range)."""
    rng = random.Random()
    ports: list[int] = []
    for _ in range(1000):
        p = rng.randrange(*_WORKER_RANGE)
        if p not in ports and not any(lo <= p <= hi for lo, hi in avoid) and _bindable(p):
            ports.append(p)
            if len(ports) == n:
                return ports
    raise RuntimeError(f"no {n} free ports in {_WORKER_RANGE}")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_port_range(n: int = WORKER_PORTS) -> tuple[int, int]:
    """``(first, last)``: ``n`` consecutive ports, each free now, in the worker range."""
    rng = random.Random()
    for _ in range(200):
        first = rng.randrange(_WORKER_RANGE[0], _WORKER_RANGE[1] - n)
        if all(_bindable(p) for p in range(first, first + n)):
            return first, first + n - 1
    raise RuntimeError(f"no {n} consecutive free ports in {_WORKER_RANGE}")


HEAD_PORTS = (
    "port",  # the GCS
    "dashboard-port",
    "dashboard-agent-listen-port",  # the agent's HTTP server: where the Jobs API runs a job
    "dashboard-agent-grpc-port",
    "metrics-export-port",
    "runtime-env-agent-port",
    "ray-client-server-port",
    "node-manager-port",
    "object-manager-port",
)


def head_ports() -> dict[str, int]:
    """Every port ``ray start --head`` takes, by its flag's name, each chosen free; the workers'
    range as ``min-worker-port`` and ``max-worker-port``."""
    ports = dict(zip(HEAD_PORTS, free_ports(len(HEAD_PORTS))))
    ports["min-worker-port"], ports["max-worker-port"] = free_port_range()
    return ports


def port_flags(ports: dict[str, int]) -> str:
    """``--flag=port ...`` for ``ray start``."""
    return " ".join(f"--{flag}={port}" for flag, port in ports.items())


def held(port: int) -> bool:
    """Whether something listens on ``port`` of 127.0.0.1."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


class DefaultRay:
    """A bare ``ray start --head`` on Ray's default ports, as a developer's own Ray would be."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="dr", dir="/tmp"))  # short: Ray's socket paths
        env = {**os.environ, "RAY_TMPDIR": str(self.root), "RAY_USAGE_STATS_ENABLED": "0"}
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        for var in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
            env.pop(var, None)
        self.log = open(self.root / "ray.log", "wb")  # noqa: SIM115 - closed in stop()
        script = "ray start --head --num-cpus=1 --disable-usage-stats && exec sleep infinity"
        ns = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
        self.proc = subprocess.Popen(
            [*ns, "bash", "-c", script], env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until Ray's default ports are all held (by this Ray, or by one that was there before)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(held(p) for p in DEFAULT_PORTS):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        raise AssertionError(
            f"Ray's default ports {DEFAULT_PORTS} are not all held; `ray start --head` said:\n"
            + (self.root / "ray.log").read_text(errors="replace")[-3000:]
        )

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the namespace's init dies, and every process in it
        self.proc.wait(timeout=30)
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)
