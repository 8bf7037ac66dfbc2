"""Searches as Ray Jobs on a running cluster: submit, list, follow, stop, resume.

A lab shares one long-running cluster and its head's MLflow server.  Each search is a Ray Job
(the Jobs API behind the dashboard port, 8265): its driver runs on the head as
``python -m hybridopt.entry.cluster search search.yaml``, which joins the cluster, logs to the
head's MLflow server and runs ``hybridopt search`` there.

- **The config travels with the job.**  The config is validated here, with its overrides and
  seed applied, and shipped as the job's working directory (``search.yaml``), so a local YAML
  the cluster has never seen runs as it is, and a bad one is refused before anything is
  submitted.
- **Plugins travel too.**  ``HYBRIDOPT_PLUGINS`` goes with the job, and a plugin that is one
  top-level module file (``my_task.py``) is shipped in its working directory; a plugin package
  must be installed on the cluster.
- **Searches never share a checkpoint.**  Each checkpoint sits under the head's store at
  ``checkpoints/<experiment>/<config>-seed<seed>-<digest>.ckpt``, where the digest is taken
  over what the search searches (everything but where it runs, its number of generations and
  its final training).  Two different searches on one cluster therefore never collide, and
  ``submit --resume`` of the same search finds its own checkpoint and continues its parent run.
- **Stopping.**  A stop sends SIGTERM to the driver, which ends the parent run and the
  candidates under way as KILLED and keeps the checkpoint.  The job is given
  :data:`STOP_GRACE_S` seconds to do so before Ray kills it.

Every error a user can cause (an unreachable address, an unknown job id, a config that fails
validation) is one line and exit code 2 before anything is submitted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional
from urllib.parse import urlparse

import yaml

from hybridopt.entry.arguments import add_config_arguments, add_restart_arguments, load_args_config
from hybridopt.errors import RayConnectError, UsageError
from hybridopt.snn.catalogue import PLUGINS_ENV

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

    from hybridopt.config import Config

__all__ = [
    "KIND",
    "add_parsers",
    "STOP_GRACE_S",
    "checkpoint_path",
    "connect",
    "entrypoint",
    "jobs_address",
    "list_searches",
    "parent_run_of",
    "ship_plugins",
    "stop",
    "submit",
]

KIND = "search"  # the ``hybridopt.kind`` of a job's metadata
STOP_GRACE_S = 60  # seconds a stopped search has to end its runs before Ray kills it
AGENT_WAIT_S = 60.0  # seconds ``submit`` waits for the head's job agent (a head just started has none yet)
_NO_AGENT = "No available agent"  # the Jobs API's answer (HTTP 500) while the head has no job agent
CONFIG_NAME = "search.yaml"  # the config in the job's working directory
_PARENT = re.compile(r"search run ([0-9a-f]{32}) ")
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def jobs_address(address: Optional[str]) -> str:
    """The Jobs API address: ``--address``, else ``RAY_ADDRESS``; it must be the dashboard's
    ``http(s)://HOST:PORT``."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise UsageError("no cluster address: give --address http://HEAD:8265 or set RAY_ADDRESS")
    url = urlparse(address)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise UsageError(f"cluster address {address!r}: expected the dashboard's http://HOST:PORT (Ray Jobs API)")
    return address.rstrip("/")


def connect(address: Optional[str], timeout: float = 5.0) -> tuple[JobSubmissionClient, str]:
    """A client of the cluster's Jobs API; fails in one line when nothing answers there."""
    address = jobs_address(address)
    url = urlparse(address)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            pass
    except OSError as e:
        reason = f"no answer within {timeout:.0f} s" if isinstance(e, TimeoutError) else e.strerror or type(e).__name__
        raise RayConnectError(f"cannot reach the Ray Jobs API at {address}: {reason}") from None
    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
    from ray.job_submission import JobSubmissionClient

    # Ray's client logs the packing and upload of a job's working directory, and that it found a
    # token, which it then uses; the commands say what they did themselves, in their own lines.
    for name in ("dashboard.modules.dashboard_sdk", "_private.runtime_env.packaging"):
        logging.getLogger(f"ray.{name}").setLevel(logging.WARNING)
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)

    # As ``ray.init`` does: a token this machine holds (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
    # ~/.ray/auth_token, as ``ray get-auth-token`` prints it on the head) goes with every request.
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    try:
        return JobSubmissionClient(address), address
    except Exception as e:  # noqa: BLE001 - ConnectionError, RuntimeError (no Jobs API there), ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if type(e).__name__ == "AuthenticationError":
            first += " (the cluster wants its token: RAY_AUTH_TOKEN=$(ray get-auth-token) on the head)"
        raise RayConnectError(f"cannot use the Ray Jobs API at {address}: {first}") from None


def checkpoint_path(cfg: Config, config_file: str) -> str:
    """Where a search's checkpoint lives in the head's store (relative to it): keyed by its
    experiment, its config's name, its seed and a digest of what it searches."""
    from hybridopt.search.checkpoint import comparable_config

    data = comparable_config(cfg.model_dump(mode="json"))
    data["search"].pop("checkpoint", None)
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]
    experiment = cfg.tracking.experiment or cfg.experiment
    return f"checkpoints/{_slug(experiment)}/{_slug(Path(config_file).stem)}-seed{cfg.seed}-{digest}.ckpt"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "search"


def entrypoint(resume: bool, fresh: bool) -> str:
    """The command a search job runs on the head, in its working directory."""
    again = " --resume" if resume else " --fresh" if fresh else ""
    return f"python -m hybridopt.entry.cluster search {CONFIG_NAME}{again}"


def submit(
    client: JobSubmissionClient,
    cfg: Config,
    config_file: str,
    *,
    resume: bool = False,
    fresh: bool = False,
    agent_wait: float = AGENT_WAIT_S,
    address: str = "the cluster",
) -> tuple[str, str]:
    """Submit a validated search config as a Ray Job; returns ``(job id, checkpoint path)``.

    A head whose job agent is not up yet (just started) or never came up (its dashboard agent
    could not take its port) answers "no available agent": the submission is tried again for up
    to ``agent_wait`` seconds, then fails in one line (:class:`RayConnectError`), as does any
    other refusal (``address``: the cluster's, as the messages name it)."""
    checkpoint = checkpoint_path(cfg, config_file)
    data = cfg.model_dump(mode="json")
    data["search"]["checkpoint"] = checkpoint
    experiment = cfg.tracking.experiment or cfg.experiment
    metadata = {
        "hybridopt.kind": KIND,
        "hybridopt.config": str(config_file),
        "hybridopt.experiment": experiment,
        "hybridopt.checkpoint": checkpoint,
        "hybridopt.seed": str(cfg.seed),
    }
    env = {"RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE_S)}
    if os.environ.get(PLUGINS_ENV):  # the user's own families and tasks: the cluster must import them too
        env[PLUGINS_ENV] = os.environ[PLUGINS_ENV]
    with tempfile.TemporaryDirectory(prefix="hybridopt-job-") as tmp:
        (Path(tmp) / CONFIG_NAME).write_text(yaml.safe_dump(data, sort_keys=False))
        ship_plugins(Path(tmp))
        deadline = time.monotonic() + agent_wait
        while True:
            try:
                job = client.submit_job(
                    entrypoint=entrypoint(resume, fresh),
                    runtime_env={"working_dir": tmp, "env_vars": env},
                    metadata=metadata,
                )
                return job, checkpoint
            except Exception as e:  # noqa: BLE001 - RuntimeError with the HTTP status, ConnectionError, ...
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                if _NO_AGENT not in first:
                    raise RayConnectError(f"the Ray Jobs API at {address} refused the search: {first}") from None
                if time.monotonic() >= deadline:
                    raise RayConnectError(
                        f"the head at {address} has no job agent after {agent_wait:g} s, so it cannot run a job "
                        "(its dashboard agent may have failed to start: see dashboard_agent.log in the "
                        "head's Ray session logs; is its --dashboard-agent-listen-port, default 52365, taken?)"
                    ) from None
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))


def ship_plugins(folder: Path) -> list[str]:
    """Copy each plugin module of ``HYBRIDOPT_PLUGINS`` that is a single top-level file here
    (``my_task`` from ``my_task.py``) into the job's working directory ``folder``, which Ray puts on
    the path of the job's driver and workers; returns their names.  A plugin that is a package, or
    a module inside one, is not shipped: it must be installed on the cluster."""
    import importlib.util
    import shutil

    shipped = []
    for name in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        spec = importlib.util.find_spec(name) if "." not in name else None
        if spec is not None and spec.submodule_search_locations is None and str(spec.origin).endswith(".py"):
            shutil.copyfile(str(spec.origin), folder / f"{name}.py")
            shipped.append(name)
    return shipped


def job_info(client: JobSubmissionClient, job: str, address: str) -> Any:
    """A job's details; an unknown id is a one-line error."""
    try:
        return client.get_job_info(job)
    except Exception as e:  # noqa: BLE001 - RuntimeError "job ... does not exist", HTTP errors
        if "does not exist" in str(e) or "404" in str(e):
            raise UsageError(f"no job {job!r} on the cluster at {address}") from None
        raise RayConnectError(f"cannot read job {job!r} at {address}: {str(e).strip().splitlines()[0]}") from None


def parent_run_of(client: JobSubmissionClient, job: str) -> Optional[str]:
    """The parent run a search job logs to, once its driver has announced it (the last one
    announced: a job's log holds one search)."""
    found = _PARENT.findall(client.get_job_logs(job))
    return found[-1] if found else None


def wait_for_parent(client: JobSubmissionClient, job: str, timeout: float) -> tuple[Optional[str], str]:
    """Poll a just-submitted job until its parent run is known or it ends; ``(run id, status)``."""
    deadline = time.monotonic() + timeout
    while True:
        status = str(client.get_job_status(job).value)
        parent = parent_run_of(client, job)
        if parent is not None or status in TERMINAL or time.monotonic() > deadline:
            return parent, status
        time.sleep(1.0)


def list_searches(client: JobSubmissionClient, tracking_uri: Optional[str]) -> list[dict[str, str]]:
    """The cluster's search jobs, newest first: id, status, config, submit time, parent run and
    the best fitness so far (read from the MLflow server at ``tracking_uri`` when given)."""
    from hybridopt.results.store import best_fitness_of

    rows = []
    jobs = [j for j in client.list_jobs() if (j.metadata or {}).get("hybridopt.kind") == KIND]
    for j in sorted(jobs, key=lambda j: j.start_time or 0, reverse=True):
        job_id = j.submission_id or j.job_id
        parent = parent_run_of(client, job_id)
        best = "-"
        if parent and tracking_uri:
            try:
                fitness = best_fitness_of(tracking_uri, parent)
                best = f"{fitness:.4f}" if fitness is not None else "-"
            except Exception:  # noqa: BLE001 - a run the server does not (yet) hold
                best = "?"
        submitted = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((j.start_time or 0) / 1000))
        rows.append(
            {
                "job": job_id,
                "status": str(j.status.value),
                "config": j.metadata.get("hybridopt.config", "?"),
                "seed": j.metadata.get("hybridopt.seed", "?"),
                "submitted": submitted,
                "parent run": parent or "-",
                "best": best,
            }
        )
    return rows


def stop(client: JobSubmissionClient, job: str, address: str, timeout: float = STOP_GRACE_S + 30) -> str:
    """Stop a job and wait until it has ended; returns its final status."""
    status = str(job_info(client, job, address).status.value)
    if status in TERMINAL:
        return status
    client.stop_job(job)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = str(client.get_job_status(job).value)
        if status in TERMINAL:
            return status
        time.sleep(0.5)
    return status


# --------------------------------------------------------------------------- the commands
def add_parsers(sub: Any) -> None:
    """The command line's ``submit``, ``jobs``, ``logs`` and ``stop`` (on ``hybridopt``'s subparsers)."""
    where = "the cluster's Ray Jobs API, http://HEAD:8265 (default: RAY_ADDRESS)"
    p_submit = sub.add_parser("submit", help="submit a search to a running cluster as a Ray Job")
    add_config_arguments(p_submit)
    add_restart_arguments(p_submit)
    p_submit.add_argument("--address", default=None, help=where)
    p_submit.add_argument(
        "--wait", type=float, default=120.0, help="seconds to wait for the search's parent run id (default 120)"
    )
    p_submit.add_argument(
        "--agent-wait",
        type=float,
        default=AGENT_WAIT_S,
        help=f"seconds to wait for the head's job agent, should it have none yet (default {AGENT_WAIT_S:g})",
    )
    p_jobs = sub.add_parser("jobs", help="list the searches on a cluster")
    p_jobs.add_argument("--address", default=None, help=where)
    p_jobs.add_argument(
        "--tracking-uri", default=None, help="the head's MLflow server, for the best fitness (or MLFLOW_TRACKING_URI)"
    )
    for name, text in (("logs", "show a search job's output"), ("stop", "stop a search job (its runs end KILLED)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("job", help="the job id (hybridopt jobs lists them)")
        p.add_argument("--address", default=None, help=where)
        if name == "logs":
            p.add_argument("--follow", action="store_true", help="keep printing until the job ends")


def cmd_submit(args: Any) -> int:
    """``hybridopt submit CONFIG``: validate, submit, and say where the search logs."""
    from hybridopt.errors import ConfigError
    from hybridopt.search.genome import GenomeSpace

    if args.agent_wait < 0:
        raise UsageError(f"--agent-wait must be 0 or more seconds, got {args.agent_wait:g}")
    cfg = load_args_config(args)  # validated before anything is submitted
    if cfg.search is None:
        raise ConfigError(f"{args.config} has no search section")
    GenomeSpace.from_config(cfg.search).validate(cfg)
    client, address = connect(args.address)
    again = {"resume": args.resume, "fresh": args.fresh}
    job, checkpoint = submit(client, cfg, args.config, **again, agent_wait=args.agent_wait, address=address)
    experiment = cfg.tracking.experiment or cfg.experiment
    print(f"submitted {job} to {address}: experiment {experiment!r}, checkpoint <store>/{checkpoint}", flush=True)
    parent, status = wait_for_parent(client, job, args.wait)
    if parent is not None:
        print(f"parent run {parent} ({status.lower()})")
    elif status in ("FAILED", "STOPPED"):
        print(f"job {job} {status.lower()} before its search started; its log ends with:")
        print("\n".join(client.get_job_logs(job).splitlines()[-15:]))
        return 1
    else:
        print(f"parent run not announced yet ({status.lower()})")
    print(f"follow: hybridopt logs {job} --follow    stop: hybridopt stop {job}")
    return 0


def cmd_jobs(args: Any) -> int:
    """``hybridopt jobs``: the cluster's searches as a table."""
    from rich.console import Console
    from rich.table import Table

    client, address = connect(args.address)
    rows = list_searches(client, args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
    table = Table(title=f"searches on {address}")
    for column in rows[0] if rows else ["job"]:
        table.add_column(column, justify="right" if column == "best" else "left", no_wrap=True)
    for r in rows:
        table.add_row(*r.values())
    Console(width=None if os.isatty(1) else 200).print(table)
    return 0


def cmd_logs(args: Any) -> int:
    """``hybridopt logs JOB [--follow]``."""
    import asyncio
    import sys

    client, address = connect(args.address)
    job_info(client, args.job, address)
    if not args.follow:
        sys.stdout.write(client.get_job_logs(args.job))
        return 0

    async def follow() -> None:
        async for lines in client.tail_job_logs(args.job):
            sys.stdout.write(lines)
            sys.stdout.flush()

    asyncio.run(follow())
    return 0


def cmd_stop(args: Any) -> int:
    """``hybridopt stop JOB``: the search ends its runs as KILLED, its checkpoint stays."""
    client, address = connect(args.address)
    status = stop(client, args.job, address)
    meta = job_info(client, args.job, address).metadata or {}
    print(f"job {args.job}: {status.lower()}")
    if meta.get("hybridopt.kind") == KIND and status == "STOPPED":
        config = meta.get("hybridopt.config", "CONFIG")
        print(f"to go on: hybridopt submit {config} --resume (with the same --set and --seed)")
    return 0
