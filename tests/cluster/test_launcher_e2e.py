"""End to end: Ray's cluster launcher runs the smoke search on a loopback "cluster".

The test follows the README's "Run on a cluster" section on one machine: ``ray up``, ``ray submit`` of
cluster/submit_search.py with configs/smoke_search.yaml, the runs in the head's MLflow
server, the UI through ``ray dashboard --remote-port`` (port forwarding), ``ray rsync-down``
of the store, ``ray down``, and nothing left running.

Isolation, so that nothing outside a temporary directory changes and nothing unrelated is
stopped:

- its own ``sshd`` on 127.0.0.1 (own host key, ``AuthorizedKeysFile`` and config in the
  temporary directory, a free port), in its own PID namespace where ``unshare`` allows: the
  ``ray stop`` that ``ray up`` and ``ray down`` run on the "head" then sees only the head's
  processes, and stopping that sshd (by PID) ends everything the head started.  Without a
  PID namespace, ``ray stop`` on the head is replaced (in the head's ``.bashrc``) by a stop
  of the processes that carry this test's token in their environment, and teardown kills
  those by PID.
- the head's sessions get ``HOME`` in the temporary directory (sshd ``SetEnv``): the project
  copy, the virtual environment, ``~/.bashrc`` and the MLflow store live there, and a
  ``RAY_TMPDIR`` and free ports (every one ``ray start`` takes) keep the head's Ray apart from
  any other Ray on the machine; one runs beside it on Ray's default ports the whole time.
- Ray's ``ssh``/``rsync`` reach that port through an ``ssh`` wrapper first on the ``ray``
  commands' ``PATH`` (Ray's local provider has no SSH port setting); Ray itself passes
  ``UserKnownHostsFile=/dev/null``, and ``-F`` keeps ``~/.ssh/config`` out.

The head runs cluster/run.yaml's own setup commands: pip installs the copy ``ray up`` shipped into
``~/hybridopt-venv``, and the search imports it from there, run from ``~`` beside that copy.  To stay
fast, the venv is there before ``ray up`` with the project's dependencies in it (from this
interpreter's site-packages, as a local wheel cache would provide them); hybridopt is not.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import http.client
import os
import shlex
import shutil
import signal
import site
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Optional

import pytest
import yaml

from tests.cluster.ray_ports import DefaultRay, head_ports, port_flags, service_ports

REPO = Path(__file__).resolve().parents[2]
BUDGET_S = 540.0  # the whole test, every ray command included
TOKEN_ENV = "HYBRIDOPT_E2E_TOKEN"

pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------- processes


def _pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _cmdline(pid: int) -> str:
    return _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace").strip()


def _name(pid: int) -> str:
    return _read(f"/proc/{pid}/comm").decode(errors="replace").strip()


def _ppid(pid: int) -> int:
    stat = _read(f"/proc/{pid}/stat")  # "pid (comm) state ppid ..."; comm may hold spaces
    fields = stat.rsplit(b")", 1)[-1].split()
    return int(fields[1]) if len(fields) > 1 else -1


def _alive(pid: int) -> bool:
    """Running, not a zombie (in the PID namespace, sshd is init and does not reap orphans)."""
    fields = _read(f"/proc/{pid}/stat").rsplit(b")", 1)[-1].split()
    return bool(fields) and fields[0] not in (b"Z", b"X")


def _pid_ns(pid: int) -> Optional[str]:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _has_token(pid: int, token: str) -> bool:
    return f"{TOKEN_ENV}={token}".encode() in _read(f"/proc/{pid}/environ").split(b"\0")


def _kill_pids(pids: list[int], grace: float = 5.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.2)


def _wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
        time.sleep(0.2)
    return False


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=3) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, http.client.HTTPException):  # not up, or not an HTTP server
        return False


def skip_unless_ci(why: str) -> None:
    """Skip for a missing system facility, except in CI (``.ci/run`` provides it): fail there."""
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def _pidns_available() -> bool:
    if os.environ.get("HYBRIDOPT_E2E_PIDNS", "1") == "0" or not shutil.which("unshare"):
        return False
    probe = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "true"]
    return subprocess.run(probe, capture_output=True, timeout=20).returncode == 0


# --------------------------------------------------------------------------- the loopback head

_SCOPED_STOP = """\
# `ray stop` for the loopback head without a PID namespace: stop the processes that carry
# this test's token (everything the head's shells started), not every Ray on the machine.
import os, signal, time
token = os.environ["{env}"].encode()
mine, p = set(), os.getpid()
while p > 1:
    mine.add(p)
    p = int(open(f"/proc/{{p}}/stat").read().rsplit(")", 1)[1].split()[1])
def carries(pid):
    try:
        return b"{env}=" + token in open(f"/proc/{{pid}}/environ", "rb").read().split(b"\\0")
    except OSError:
        return False
victims = [int(d) for d in os.listdir("/proc") if d.isdigit() and int(d) not in mine and carries(int(d))]
for sig in (signal.SIGTERM, signal.SIGKILL):
    for pid in victims:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    time.sleep(3)
print(f"stopped {{len(victims)}} processes of this loopback head")
"""


class Loopback:
    """A loopback SSH "head node" and the environment for the ``ray`` commands that drive it."""

    def __init__(self) -> None:
        # Short, so the head's Ray socket paths (RAY_TMPDIR/ray/session_*/sockets/...) fit 107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="hyb-e2e-", dir="/tmp"))
        self.token = uuid.uuid4().hex
        self.deadline = time.monotonic() + BUDGET_S
        self.home = self.root / "home"
        self.logs = self.root / "logs"
        self.key = self.root / "id_ed25519"
        self.pidns = _pidns_available()
        self.sshd: Optional[subprocess.Popen] = None
        self.created_privsep = False
        self.up_attempted = False
        self.down_done = False
        self.timings: dict[str, float] = {}
        self.ray_ports = head_ports()
        workers = (self.ray_ports["min-worker-port"], self.ray_ports["max-worker-port"])
        (self.ssh_port, self.mlflow_port, self.ui_port) = service_ports(3, avoid=(workers,))
        self.config = self.root / "cluster.yaml"
        self.cluster_name = f"hybridopt-e2e-{self.token[:8]}"
        self.mlflow_uri = f"http://127.0.0.1:{self.mlflow_port}"

    # ----- setup

    def start(self) -> None:
        for d in (self.home, self.logs, self.root / "bin", self.root / "client-home", self.root / "client-tmp"):
            d.mkdir(parents=True)
        keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", ""]
        subprocess.run([*keygen, "-f", str(self.root / "host_key")], check=True, timeout=30)
        subprocess.run([*keygen, "-f", str(self.key)], check=True, timeout=30)
        shutil.copy(self.key.with_suffix(".pub"), self.root / "authorized_keys")
        (self.root / "sshd_config").write_text(
            f"ListenAddress 127.0.0.1:{self.ssh_port}\n"
            f"HostKey {self.root / 'host_key'}\n"
            f"AuthorizedKeysFile {self.root / 'authorized_keys'}\n"
            f"PidFile {self.root / 'sshd.pid'}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            "PermitRootLogin prohibit-password\nStrictModes no\nPrintMotd no\nPrintLastLog no\n"
            "AllowTcpForwarding yes\nMaxStartups 100\nMaxSessions 100\n"
            f"SetEnv HOME={self.home}\n"
        )
        self._write_head_home()
        self._write_ssh_wrapper()
        self.config.write_text(yaml.safe_dump(self.derive_config(), sort_keys=False))
        if not os.path.isdir("/run/sshd"):  # sshd's privilege-separation directory (Debian's unit makes it)
            os.makedirs("/run/sshd", mode=0o755)
            self.created_privsep = True
        sshd = [shutil.which("sshd") or "/usr/sbin/sshd", "-D", "-e", "-f", str(self.root / "sshd_config")]
        if self.pidns:
            sshd = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", *sshd]
        with open(self.logs / "sshd.log", "wb") as log:
            self.sshd = subprocess.Popen(sshd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        assert _wait_port(self.ssh_port, 20), f"sshd did not listen on {self.ssh_port}:\n{self.tail('sshd')}"

    def _write_head_home(self) -> None:
        lines = [
            "# The loopback head's environment (Ray sources ~/.bashrc before each remote command).",
            f"export RAY_TMPDIR={self.root / 'h'}",
            # Ray rewrites --node-ip-address=127.0.0.1 to the machine's routable address
            # (services.resolve_ip_for_localhost) unless multi-node support is off; off, the
            # head's Ray (a one-node cluster) advertises and listens on 127.0.0.1 only.
            "export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0",
            "export RAY_USAGE_STATS_ENABLED=0",
            f"export HYBRIDOPT_MLFLOW_PORT={self.mlflow_port}",
            f"export {TOKEN_ENV}={self.token}",
        ]
        if not self.pidns:
            (self.root / "scoped_stop.py").write_text(_SCOPED_STOP.format(env=TOKEN_ENV))
            stop = f"{shlex.quote(sys.executable)} {self.root / 'scoped_stop.py'}"
            lines.append(f'ray() {{ if [ "$1" = stop ]; then {stop}; else command ray "$@"; fi; }}')
        (self.home / ".bashrc").write_text("\n".join(lines) + "\n")
        self._provision_head_venv()

    def _provision_head_venv(self) -> None:
        """The head's machine image: ``~/hybridopt-venv`` made as run.yaml's first setup command makes
        it (which then finds it there), with the project's dependencies already in it, the way a local
        wheel cache would put them, so that CI does not download and unpack PyTorch again.  They come
        from this interpreter's site-packages through a ``.pth`` of plain paths: no ``.pth`` of theirs
        runs, so the editable install of this checkout does not come along.  hybridopt itself is not
        there: run.yaml's own setup commands install the shipped copy into this venv."""
        venv = self.home / "hybridopt-venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        purelib = subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()
        deps = [
            p
            for p in dict.fromkeys([*site.getsitepackages(), *sys.path])
            if os.path.isdir(p) and p.endswith(("site-packages", "dist-packages"))
        ]
        Path(purelib, "hybridopt_e2e_deps.pth").write_text("".join(f"{d}\n" for d in deps))
        ray = venv / "bin" / "ray"  # the console script a real install of ray would have put there
        ray.write_text(f"#!{venv}/bin/python\nimport sys\nfrom ray.scripts.scripts import main\nsys.exit(main())\n")
        ray.chmod(0o755)

    def _write_ssh_wrapper(self) -> None:
        ssh = shutil.which("ssh")
        (self.root / "ssh_config").write_text(f"Host *\n  Port {self.ssh_port}\n  LogLevel ERROR\n")
        wrapper = self.root / "bin" / "ssh"
        wrapper.write_text(f'#!/bin/sh\nexec {ssh} -F {self.root / "ssh_config"} "$@"\n')
        wrapper.chmod(0o755)

    def derive_config(self) -> dict:
        """cluster/run.yaml, pointed at the loopback head."""
        cfg = yaml.safe_load((REPO / "cluster" / "run.yaml").read_text())
        cfg["cluster_name"] = self.cluster_name
        assert cfg["provider"]["type"] == "local"
        cfg["provider"].update(head_ip="127.0.0.1", worker_ips=[])
        cfg["auth"] = {"ssh_user": getpass.getuser(), "ssh_private_key": str(self.key)}
        assert cfg["file_mounts"] == {"~/hybridopt": "."}, "the project is shipped from the repository root"
        # setup_commands stay as run.yaml has them: the real install into the head's venv
        assert any("pip install" in c and "~/hybridopt" in c for c in cfg["setup_commands"])
        starts = cfg["head_start_ray_commands"]
        (i,) = [k for k, c in enumerate(starts) if "ray start --head" in c]
        starts[i] += f" --node-ip-address=127.0.0.1 {port_flags(self.ray_ports)}"
        return cfg

    # ----- ray commands

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
        env.update(
            PATH=f"{self.root / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}",
            HOME=str(self.root / "client-home"),
            TMPDIR=str(self.root / "client-tmp"),  # Ray's cluster-config cache
            RAY_TMPDIR=str(self.root / "c"),  # the local provider's cluster state and lock
            RAY_USAGE_STATS_ENABLED="0",
        )
        return env

    def ray_argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "ray.scripts.scripts", *args]

    def run_ray(self, name: str, args: tuple[str, ...], timeout: float) -> Optional[int]:
        """``ray ARGS`` from the repository root, output in logs/NAME.log; None when it ran over."""
        t0 = time.monotonic()
        with open(self.logs / f"{name}.log", "wb") as log:
            try:
                done = subprocess.run(
                    self.ray_argv(*args),
                    cwd=REPO,
                    env=self.env(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                )
            except subprocess.TimeoutExpired:
                return None
            finally:
                self.timings[name] = round(time.monotonic() - t0, 1)
        return done.returncode

    def ray(self, name: str, *args: str, limit: float) -> int:
        timeout = min(limit, self.deadline - time.monotonic())
        if timeout <= 5:
            pytest.fail(f"out of time before `ray {name}` (budget {BUDGET_S:.0f} s): {self.timings}")
        rc = self.run_ray(name, args, timeout)
        if rc is None:
            pytest.fail(f"`ray {' '.join(args)}` ran over {timeout:.0f} s:\n{self.tail(name)}")
        return rc

    def tail(self, name: str, lines: int = 60) -> str:
        text = _read(str(self.logs / f"{name}.log")).decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    # ----- what runs

    def head_processes(self) -> list[int]:
        """Processes the head started (not sshd itself, nor its connection handlers)."""
        if self.pidns:
            assert self.sshd is not None
            ns = {_pid_ns(p) for p in _pids() if _ppid(p) == self.sshd.pid} - {None}
            found = [p for p in _pids() if _pid_ns(p) in ns]
        else:
            found = [p for p in _pids() if _has_token(p, self.token)]
        return [p for p in found if _alive(p) and _name(p) not in ("sshd", "sshd-session", "unshare")]

    def strays(self) -> list[int]:
        """Processes anywhere that name this test's directory, other than sshd."""
        keep = {os.getpid()} | ({self.sshd.pid} if self.sshd else set())
        return [
            p
            for p in _pids()
            if p not in keep
            and str(self.root) in _cmdline(p)
            and _alive(p)
            and _name(p) not in ("sshd", "sshd-session", "unshare")
        ]

    def describe(self, pids: list[int]) -> str:
        return "\n".join(f"  {p} {_cmdline(p)[:200]}" for p in pids)

    # ----- teardown

    def stop(self) -> None:
        if self.up_attempted and not self.down_done:
            self.run_ray("down-teardown", ("down", "-y", str(self.config)), timeout=120)
        leftovers = self.head_processes() if self.sshd else []
        if leftovers:
            print(f"teardown: the head had left\n{self.describe(leftovers)}")
        if self.sshd and self.sshd.poll() is None:
            # unshare --fork ignores SIGTERM: stop its child, the namespace's sshd (PID 1 there),
            # and the kernel ends everything else in the namespace with it.
            children = [p for p in _pids() if _ppid(p) == self.sshd.pid] if self.pidns else []
            for child in children or [self.sshd.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGTERM)
            try:
                self.sshd.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.sshd.kill()
                self.sshd.wait(timeout=15)
        if not self.pidns:
            _kill_pids([p for p in _pids() if _has_token(p, self.token)])
        _kill_pids(self.strays())
        # Ray's SSH ControlPath directories: this cluster's, and the per-user parent once empty.
        user, cluster = (hashlib.sha256(x.encode()).hexdigest()[:10] for x in (getpass.getuser(), self.cluster_name))
        for control_dir in (f"/tmp/ray_ssh_{user}/{cluster}", f"/tmp/ray_ssh_{user}"):
            with contextlib.suppress(OSError):
                os.rmdir(control_dir)
        if self.created_privsep:
            with contextlib.suppress(OSError):
                os.rmdir("/run/sshd")
        if os.environ.get("HYBRIDOPT_E2E_LOGS"):  # keep the ray commands' output for a post-mortem
            with contextlib.suppress(OSError):
                shutil.copy(self.home / "hybridopt-runs" / "mlflow-server.log", self.logs)
            with contextlib.suppress(OSError):
                shutil.copytree(self.root / "h" / "ray" / "session_latest" / "logs", self.logs / "head-ray-logs")
            shutil.copytree(self.logs, os.environ["HYBRIDOPT_E2E_LOGS"], dirs_exist_ok=True)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def loopback(default_ray: DefaultRay):
    if os.name != "posix" or not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("the loopback launcher test runs its own sshd and needs root")
    missing = [
        tool
        for tool in ("sshd", "ssh", "ssh-keygen", "rsync")
        if not shutil.which(tool) and not (tool == "sshd" and os.path.exists("/usr/sbin/sshd"))
    ]
    if missing:
        # CI installs them (.ci/run): there a missing one is a failure, elsewhere the reason to skip
        why = f"the launcher test needs {', '.join(missing)}: apt-get install -y openssh-server openssh-client rsync"
        skip_unless_ci(why)
    lb = Loopback()
    try:
        lb.start()
        yield lb
    finally:
        lb.stop()


# --------------------------------------------------------------------------- the test


def test_ray_up_submit_search_mlflow_rsync_down(loopback: Loopback) -> None:
    from mlflow.tracking import MlflowClient

    lb = loopback
    config = str(lb.config)

    lb.up_attempted = True
    up = lb.ray("up", "up", "-y", "--disable-usage-stats", config, limit=420)
    assert up == 0, f"ray up failed:\n{lb.tail('up')}"
    assert _healthy(lb.mlflow_uri), f"the head's start commands did not start MLflow:\n{lb.tail('up')}"

    submit = lb.ray(
        "submit", "submit", config, "cluster/submit_search.py", "--", "configs/smoke_search.yaml", limit=420
    )
    out = lb.tail("submit", 100_000)
    assert submit == 0, f"ray submit failed:\n{out}"
    # the installed package, from the head's venv, not the project copy beside the script in ~
    site_pkgs = next((lb.home / "hybridopt-venv" / "lib").glob("python3*/site-packages"))
    assert f"from {site_pkgs / 'hybridopt'} (python {lb.home / 'hybridopt-venv'}" in out, out
    assert list(site_pkgs.glob("hybridopt-*.dist-info")), "run.yaml's setup did not install hybridopt"
    assert "joined Ray at 127.0.0.1:" in out, out

    # The runs, through the head's MLflow server.
    client = MlflowClient(tracking_uri=lb.mlflow_uri)
    experiment = client.get_experiment_by_name("smoke_search")
    assert experiment is not None, out
    parents = client.search_runs([experiment.experiment_id], "tags.`hybridopt.kind` = 'search'")
    assert len(parents) == 1, [r.info.run_id for r in parents]
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert "best_fitness" in parent.data.metrics
    children = client.search_runs([experiment.experiment_id], "tags.`hybridopt.kind` = 'candidate'")
    assert len(children) >= 4  # generation 0 alone is the population
    assert {c.data.tags.get("mlflow.parentRunId") for c in children} == {parent.info.run_id}
    assert all("fitness" in c.data.metrics for c in children if c.info.status == "FINISHED")

    # README: open the UI from your machine (port forwarding to the head's 127.0.0.1:PORT).
    ui = subprocess.Popen(
        lb.ray_argv("dashboard", config, "--port", str(lb.ui_port), "--remote-port", str(lb.mlflow_port)),
        cwd=REPO,
        env=lb.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _healthy(f"http://127.0.0.1:{lb.ui_port}") and ui.poll() is None:
            time.sleep(0.5)
        assert _healthy(f"http://127.0.0.1:{lb.ui_port}"), "ray dashboard --remote-port did not forward the MLflow UI"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=15)

    # README: copy the store back and open it locally.
    copy = lb.root / "runs" / "cluster"
    copy.mkdir(parents=True)
    down_sync = lb.ray("rsync-down", "rsync-down", config, "~/hybridopt-runs/", f"{copy}/", limit=120)
    assert down_sync == 0, lb.tail("rsync-down")
    local = MlflowClient(tracking_uri=f"sqlite:///{copy / 'mlflow.db'}")
    copied = local.search_runs([local.get_experiment_by_name("smoke_search").experiment_id])
    assert {r.info.run_id for r in copied} == {parent.info.run_id} | {c.info.run_id for c in children}

    down = lb.ray("down", "down", "-y", config, limit=180)
    lb.down_done = True
    assert down == 0, lb.tail("down")

    # Nothing left running: the head's Ray, the MLflow server and its supervisor are gone
    # (ray stop, then the supervisor sees Ray gone), and so are Ray's SSH master connections.
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline and (lb.head_processes() or lb.strays()):
        time.sleep(1)
    left = lb.head_processes() + lb.strays()
    assert not left, f"still running after ray down:\n{lb.describe(left)}"
    assert not _healthy(lb.mlflow_uri)
    print(f"loopback launcher timings (s): {lb.timings}")
