"""Running a search on a Ray cluster: the head's MLflow server and the cluster entry point.

``cluster/submit_search.py`` (what ``ray submit`` copies to the head node) calls
``main(["search", ...])``; the head's start commands call ``python -m hybridopt.entry.cluster
mlflow`` so the tracking UI is up as soon as ``ray up`` returns.

The head runs one MLflow tracking server (SQLite backend and artifact directory in the run
store, by default ``~/hybridopt-runs``) bound to 127.0.0.1: the search driver, on the head, is
its only client, and Ray workers never see the store.  A small supervisor process owns the
server and stops it once the head's Ray stops answering, so ``ray down`` (which runs
``ray stop`` on the head) leaves nothing running.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from hybridopt.entry.arguments import add_config_arguments, add_restart_arguments, search_argv

__all__ = [
    "DEFAULT_PROJECT",
    "DEFAULT_STORE",
    "ClusterEntryError",
    "build_parser",
    "ensure_mlflow_server",
    "main",
    "resolve_config",
    "serve_mlflow",
]

DEFAULT_PROJECT = "~/hybridopt"  # where cluster/run.yaml's file_mounts put the project
DEFAULT_STORE = "~/hybridopt-runs"  # MLflow database, artifacts, search checkpoints
STORE_ENV = "HYBRIDOPT_STORE"  # another default for the store
DEFAULT_MLFLOW_PORT = 5000
PORT_ENV = "HYBRIDOPT_MLFLOW_PORT"

_SERVER_LOG = "mlflow-server.log"
_SUPERVISOR_PID = "mlflow-supervisor.pid"
_GCS_FAILURES_TO_STOP = 3  # consecutive failed probes, one a second


# The help of ``hybridopt search``'s arguments as they read here (the command line declares them).
_SEARCH_HELP = {
    "config": "search config (absolute, or relative to the working directory or --project)",
    "overrides": "config override, passed to hybridopt search (repeatable)",
    "resume": "continue the search from its checkpoint in the store",
    "fresh": "start anew where the store holds a checkpoint",
}


class ClusterEntryError(RuntimeError):
    """Something the cluster run needs is missing; the message is one line."""


def _default_store() -> str:
    return os.environ.get(STORE_ENV) or DEFAULT_STORE


def _default_port() -> int:
    return int(os.environ.get(PORT_ENV) or DEFAULT_MLFLOW_PORT)


def _server_uri(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def _healthy(uri: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(uri + "/health", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _reachable(address: str, timeout: float = 2.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


# Start argv[2:] in a new session with its output appended to argv[1], print its pid, and exit:
# the process is then nobody's child but init's.
_DETACH = (
    "import subprocess, sys\n"
    "log = open(sys.argv[1], 'ab')\n"
    "p = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,"
    " start_new_session=True)\n"
    "print(p.pid)\n"
)


def _running(pid: int) -> bool:
    """Whether process ``pid`` is alive (not exited, not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _supervisor(store: Path) -> Optional[dict]:
    """The running supervisor recorded in ``store`` (pid, port, gcs, node), if any."""
    try:
        info = json.loads((store / _SUPERVISOR_PID).read_text())
        pid = int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            alive = b"hybridopt.entry.cluster" in f.read()
    except FileNotFoundError:
        alive = False
    except OSError:  # no /proc: trust the pid
        try:
            os.kill(pid, 0)
            alive = True
        except OSError:
            alive = False
    return info if alive else None


def _stop_supervisor(info: dict, uri: str, timeout: float = 30.0) -> None:
    try:
        os.kill(int(info["pid"]), signal.SIGTERM)
    except OSError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _healthy(uri):
        time.sleep(0.5)


def serve_mlflow(store: Path, port: int, watch_gcs: Optional[str] = None, ray_node: Optional[str] = None) -> int:
    """Run ``mlflow server`` on 127.0.0.1:``port`` with its store in ``store`` until SIGTERM,
    until the server exits, or (with ``watch_gcs``) until Ray's GCS at that address stops
    answering; then stop the server's whole process group.  ``ray_node`` (the head's Ray node
    id) is recorded so that a later Ray on the same head replaces this server."""
    store.mkdir(parents=True, exist_ok=True)
    (store / "artifacts").mkdir(exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{(store / 'mlflow.db').resolve()}",
        "--artifacts-destination",
        str((store / "artifacts").resolve()),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # MLflow >= 3.5 also starts job-queue consumers (GenAI evaluation, trace archival) with a
    # store in /dev/shm; a search uses none of them.
    env = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false"),
    }
    with open(store / _SERVER_LOG, "ab") as log:
        server = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    pid_file = store / _SUPERVISOR_PID
    me = {"pid": os.getpid(), "port": port, "gcs": watch_gcs, "node": ray_node}
    pid_file.write_text(json.dumps(me) + "\n")
    failures = 0
    try:
        while not stop and server.poll() is None:
            time.sleep(1.0)
            if watch_gcs:
                failures = 0 if _reachable(watch_gcs) else failures + 1
                if failures >= _GCS_FAILURES_TO_STOP:
                    print(f"Ray at {watch_gcs} stopped; stopping the MLflow server", flush=True)
                    break
    finally:
        if server.poll() is None:
            try:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
            except ProcessLookupError:
                pass
        try:
            if json.loads(pid_file.read_text()).get("pid") == os.getpid():
                pid_file.unlink()
        except (OSError, ValueError):
            pass
    return 0 if stop or server.returncode in (0, -signal.SIGTERM) else 1


def ensure_mlflow_server(
    store: Path, port: int, watch_gcs: Optional[str], ray_node: Optional[str] = None, timeout: float = 180.0
) -> str:
    """The URI of the head's MLflow server, starting it (detached, under its supervisor) if it
    is not answering yet, or if it belongs to an earlier Ray on this head (``ray up`` again
    restarts Ray; the old server would stop once its supervisor noticed)."""
    uri = _server_uri(port)
    if _healthy(uri):
        owner = _supervisor(store)
        if owner is None or owner.get("port") != port or owner.get("node") == ray_node:
            return uri  # this Ray's server, or one that we did not start
        _stop_supervisor(owner, uri)
    store.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "hybridopt.entry.cluster",
        "mlflow",
        "--foreground",
        "--store",
        str(store),
        "--port",
        str(port),
    ]
    if watch_gcs:
        command += ["--watch-gcs", watch_gcs]
    if ray_node:
        command += ["--ray-node", ray_node]
    # Detached twice (a new session, and not our descendant): the server outlives this process, the
    # SSH session that started it, and a Ray Job's stop, which signals the job's whole process tree.
    launched = subprocess.run(
        [sys.executable, "-c", _DETACH, str(store / _SERVER_LOG), *command],
        cwd=store,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=True,
    )
    supervisor = int(launched.stdout.split()[-1])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _healthy(uri):
            return uri
        if not _running(supervisor):
            raise ClusterEntryError(
                f"the MLflow server on port {port} did not start; {store / _SERVER_LOG} ends with:\n"
                + _log_tail(store / _SERVER_LOG)
            )
        time.sleep(0.5)
    raise ClusterEntryError(
        f"the MLflow server on port {port} did not answer within {timeout:.0f} s (see {store / _SERVER_LOG})"
    )


def resolve_config(config: str, project: Path) -> Path:
    """``config`` as given (absolute or relative to the working directory), else relative to
    the project copy on the head (so ``configs/x.yaml`` means the shipped one)."""
    for candidate in (Path(config).expanduser(), project / config):
        if candidate.is_file():
            return candidate.resolve()
    raise ClusterEntryError(f"config {config} not found (looked in {Path.cwd()} and {project})")


def _join(address: str) -> tuple[str, str]:
    """Join Ray at ``address``; the GCS address and this node's id."""
    import ray

    from hybridopt.search.dispatch import RayConnectError, init_ray

    try:
        init_ray(address)
    except RayConnectError as e:
        raise ClusterEntryError(str(e)) from None
    context = ray.get_runtime_context()
    return context.gcs_address, context.get_node_id()


def cmd_search(args: argparse.Namespace) -> int:
    import ray

    import hybridopt
    from hybridopt.entry.cli import main as cli_main

    project = Path(args.project).expanduser()
    store = Path(args.store).expanduser().resolve()
    config = resolve_config(args.config, project)
    gcs, node = _join(args.address)  # join the cluster first: a bad address fails before anything starts
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    res = ray.cluster_resources()
    print(f"hybridopt {hybridopt.__version__} from {Path(hybridopt.__file__).parent} (python {sys.executable})")
    print(f"joined Ray at {gcs}: {len(nodes)} node(s), {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs")
    uri = args.tracking_uri or ensure_mlflow_server(store, args.mlflow_port, gcs, node)
    print(f"tracking to {uri} (store {store})", flush=True)
    store.mkdir(parents=True, exist_ok=True)
    os.chdir(store)  # the search's relative checkpoint path lands in the store, so --resume finds it
    _, *options = search_argv(args)  # the config as resolved on this node in place of the one given
    return cli_main(["search", str(config), "--address", args.address, "--tracking-uri", uri, *options])


def cmd_mlflow(args: argparse.Namespace) -> int:
    store = Path(args.store).expanduser().resolve()
    if args.foreground:
        return serve_mlflow(store, args.port, args.watch_gcs, args.ray_node)
    gcs, node = _join(os.environ.get("RAY_ADDRESS") or "auto")
    print(f"MLflow server at {ensure_mlflow_server(store, args.port, gcs, node)} (store {store})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hybridopt.entry.cluster",
        description="Run a hybridopt search on the Ray cluster this node belongs to.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("search", help="join the cluster, ensure the head's MLflow server, run `hybridopt search`")
    add_config_arguments(p, _SEARCH_HELP)
    add_restart_arguments(p, _SEARCH_HELP)
    p.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS") or "auto",
        help="Ray cluster to join (default: RAY_ADDRESS, else 'auto': the cluster this node runs)",
    )
    p.add_argument("--project", default=DEFAULT_PROJECT, help=f"project copy on this node (default {DEFAULT_PROJECT})")
    p.add_argument(
        "--store", default=_default_store(), help=f"MLflow store and checkpoints ({STORE_ENV}, default {DEFAULT_STORE})"
    )
    p.add_argument(
        "--mlflow-port",
        type=int,
        default=_default_port(),
        help=f"port of the head's MLflow server ({PORT_ENV}, default {DEFAULT_MLFLOW_PORT})",
    )
    p.add_argument("--tracking-uri", default=None, help="log to this MLflow server instead of starting one")
    p.set_defaults(func=cmd_search)
    m = sub.add_parser("mlflow", help="ensure the head's MLflow server is running (stops when Ray stops)")
    m.add_argument(
        "--store", default=_default_store(), help=f"MLflow store directory ({STORE_ENV}, default {DEFAULT_STORE})"
    )
    m.add_argument("--port", type=int, default=_default_port(), help=f"port ({PORT_ENV}, default 5000)")
    m.add_argument("--watch-gcs", default=None, help="with --foreground: stop when Ray's GCS at HOST:PORT stops")
    m.add_argument("--ray-node", default=None, help="with --foreground: the head's Ray node id, recorded")
    m.add_argument("--foreground", action="store_true", help="run the supervisor in this process")
    m.set_defaults(func=cmd_mlflow)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ClusterEntryError as e:
        print(f"hybridopt-cluster: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
