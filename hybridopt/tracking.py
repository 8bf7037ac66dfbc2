"""MLflow at the edge: one writer (the driver) records runs, params, curves and artifacts.

Uses ``MlflowClient`` with explicit run ids (no process-global active run), and batches
everything: params 100 per call, metrics 1000 per call.  The default store is MLflow's
own default, ``sqlite:///mlflow.db`` in the working directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional

# Fail fast on an unreachable server instead of retrying for minutes.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
# The driver prints its own summary; MLflow would print two "View run" lines per ended run.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

from mlflow.entities import Metric, Param, RunStatus, RunTag  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from hybridopt.errors import TrackingError
from hybridopt.stored_names import (
    ARTIFACT_CONFIG,
    ARTIFACT_WEIGHTS,
    METRIC_CPU_TIME_S,
    METRIC_FITNESS,
    METRIC_WALL_TIME_S,
    TAG_FAILURE,
    TAG_KIND,
    TAG_NOTE,
    TAG_PARENT,
)

# After the import: importing mlflow configures its loggers (INFO), which would print "Creating
# initial MLflow database tables..." and the like on every new store.
logging.getLogger("mlflow").setLevel(logging.WARNING)
logging.getLogger("alembic").setLevel(logging.WARNING)

__all__ = [
    "DEFAULT_URI",
    "Tracker",
    "TrackingError",
    "check_reachable",
    "describe",
    "final_metrics",
    "flatten",
    "log_result",
    "resolve_uri",
    "run_params",
    "store_client",
]

DEFAULT_URI = "sqlite:///mlflow.db"
_PARAM_MAX = 6000


def resolve_uri(cli_uri: Optional[str], config_uri: Optional[str]) -> str:
    """``--tracking-uri`` > ``MLFLOW_TRACKING_URI`` > the config's ``tracking.uri`` > default."""
    return cli_uri or os.environ.get("MLFLOW_TRACKING_URI") or config_uri or DEFAULT_URI


def check_reachable(uri: str) -> None:
    """Raise :class:`TrackingError` unless the store at ``uri`` can be used; writes nothing."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as r:
                r.read()
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise TrackingError(f"tracking server unreachable at {uri}: {reason}") from None
    elif uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.parent.exists():
            raise TrackingError(f"tracking store directory does not exist: {path.parent}")
    elif "://" not in uri and not uri.startswith("file:"):
        raise TrackingError(f"unsupported tracking URI {uri!r} (use sqlite:///PATH, http(s)://HOST:PORT or file:PATH)")


def _artifact_location(uri: str, experiment: str) -> Optional[str]:
    """Artifacts of a SQLite store live beside the database file (``<dir>/mlruns/<experiment>``),
    not in whatever directory the process happens to run in."""
    if not uri.startswith("sqlite:///"):
        return None  # the server (or file store) decides
    root = Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlruns" / experiment
    return root.as_uri()


@contextlib.contextmanager
def _store_lock(uri: str):
    """For a SQLite store, hold an exclusive lock on its directory while the store is opened.

    MLflow creates (and migrates) a new database's schema and the experiment on first use; two
    processes doing that at once (seeds started in parallel on a fresh ``mlflow.db``) race, and
    one fails with "duplicate column" or a unique-constraint error.  The lock serialises only
    that start-up; logging afterwards goes through SQLite's own locking."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    fd = os.open(Path(uri.removeprefix("sqlite:///")).resolve().parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def store_client(uri: str) -> MlflowClient:
    """MLflow's client of the store at ``uri``, for reading it (the results store)."""
    return MlflowClient(tracking_uri=uri)


class Tracker:
    """Records runs in one MLflow experiment."""

    def __init__(self, uri: str, experiment: str):
        check_reachable(uri)
        self.uri, self.experiment = uri, experiment
        try:
            with _store_lock(uri):
                self.client = MlflowClient(tracking_uri=uri)
                exp = self.client.get_experiment_by_name(experiment)
                if exp is None:
                    where = _artifact_location(uri, experiment)
                    self.experiment_id = self.client.create_experiment(
                        experiment,
                        artifact_location=where,
                        tags={
                            TAG_NOTE: "hybridopt runs: each search is a parent run with one nested "
                            "run per candidate (tags hybridopt.generation, hybridopt.genome; metric fitness); "
                            "train runs stand alone.  `hybridopt report " + experiment + "` tables and plots them."
                        },
                    )
                else:
                    self.experiment_id = exp.experiment_id
        except Exception as e:  # noqa: BLE001 - any store failure becomes one clear line
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise TrackingError(f"cannot open tracking store {uri}: {msg}") from None

    def start_run(
        self,
        name: str,
        kind: str,
        params: Optional[dict[str, Any]] = None,
        tags: Optional[dict[str, str]] = None,
        parent_run_id: Optional[str] = None,
        start_time: Optional[float] = None,
    ) -> str:
        """Create a run tagged ``hybridopt.kind=<kind>`` (a child when ``parent_run_id``), started
        at ``start_time`` (seconds since the epoch; default now)."""
        all_tags = {TAG_KIND: kind, **(tags or {})}
        if parent_run_id:
            all_tags[TAG_PARENT] = parent_run_id
        started = None if start_time is None else int(start_time * 1000)
        run = self.client.create_run(self.experiment_id, start_time=started, run_name=name, tags=all_tags)
        if params:
            self.log_params(run.info.run_id, params)
        return run.info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        items = [Param(k, str(v)[:_PARAM_MAX]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)[:_PARAM_MAX]) for k, v in tags.items()])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        self.log_history(run_id, [(step, metrics)])

    def log_history(
        self, run_id: str, history: Iterable[tuple[int, dict[str, float]]], tags: Optional[dict[str, str]] = None
    ) -> None:
        """Log ``[(step, {key: value})]``, and ``tags`` (at most 100) with them, in as few calls to
        the store as MLflow allows (1000 entries a call): one, for a rung's curves."""
        now = int(time.time() * 1000)
        pending = [RunTag(k, str(v)[:_PARAM_MAX]) for k, v in (tags or {}).items()]
        batch: list[Metric] = []
        for step, metrics in history:
            for k, v in metrics.items():
                batch.append(Metric(k, float(v), now, int(step)))
                if len(batch) + len(pending) == 1000:
                    self.client.log_batch(run_id, metrics=batch, tags=pending)
                    batch, pending = [], []
        if batch or pending:
            self.client.log_batch(run_id, metrics=batch, tags=pending)

    def log_artifact_file(self, run_id: str, path: Path, artifact_path: Optional[str] = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_artifact_bytes(self, run_id: str, name: str, data: bytes, artifact_path: Optional[str] = None) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / name
            p.write_bytes(data)
            self.client.log_artifact(run_id, str(p), artifact_path)

    def end_run(
        self,
        run_id: str,
        status: str = "FINISHED",
        reason: Optional[str] = None,
        history: Iterable[tuple[int, dict[str, float]]] = (),
    ) -> None:
        """End a run as FINISHED, FAILED or KILLED, with its last ``history`` (``[(step, {key:
        value})]``); a reason is kept as tag ``hybridopt.failure``."""
        tags = {TAG_FAILURE: reason} if reason else {}
        history = list(history)
        if tags or history:
            self.log_history(run_id, history, tags)
        self.client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.from_string(status)))

    # ------------------------------------------------------------------ reading back (resume)
    def run_tags(self, run_id: str) -> Optional[dict[str, str]]:
        """A run's tags; ``None`` when the store holds no such run."""
        try:
            return dict(self.client.get_run(run_id).data.tags)
        except Exception:  # noqa: BLE001 - MLflow raises its own kinds for an unknown id
            return None

    def run_metrics(self, run_id: str) -> dict[str, float]:
        """A run's metrics, each at its latest step."""
        return dict(self.client.get_run(run_id).data.metrics)

    def mark_running(self, run_id: str) -> None:
        """A run under way again (a resumed search's parent)."""
        self.client.update_run(run_id, status="RUNNING")

    def artifact_uri(self, run_id: str) -> str:
        """Where a run's artifacts are kept (``file://...`` for a local store)."""
        return self.client.get_run(run_id).info.artifact_uri

    def read_artifact(self, run_id: str, name: str) -> Optional[bytes]:
        """An artifact's bytes; ``None`` when the run has no such artifact."""
        try:
            with tempfile.TemporaryDirectory() as tmp:
                return Path(self.client.download_artifacts(run_id, name, tmp)).read_bytes()
        except Exception:  # noqa: BLE001 - a run without it (failed, or a search that kept no states)
            return None

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """A metric's ``(step, value)`` pairs, by step."""
        return sorted((m.step, m.value) for m in self.client.get_metric_history(run_id, key))

    def children(self, parent_run_id: str) -> list[Any]:
        """The (not deleted) child runs of a run, as MLflow ``Run`` objects."""
        return self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.{TAG_PARENT} = '{parent_run_id}'", max_results=50000
        )

    def delete_run(self, run_id: str) -> None:
        self.client.delete_run(run_id)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (the params of a run)."""
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def run_params(cfg: Any, *, search: bool = False) -> dict[str, Any]:
    """The flattened config a run logs as params: only what applies to it.  The inner loop that
    does not train this task (``es`` for gradient tasks, ``train`` for control), the coefficients
    of static projections, where it is tracked and, but for a search's parent, ``search`` and
    ``ray`` are left out (they are in the run's ``config.yaml``)."""
    from hybridopt.train.loops import inner_loop

    data = cfg.model_dump(mode="json")
    drop = {"tracking", *inner_loop(cfg).unused_sections}
    if not search:
        drop |= {"search", "ray"}
    data = {k: v for k, v in data.items() if k not in drop}
    data["plasticity"] = {
        p: (v if v["rule"] != "none" else {"rule": "none"}) for p, v in data.get("plasticity", {}).items()
    }
    return flatten(data)


def describe(tracker: Tracker, run_id: str, text: str) -> None:
    """The run's description (shown on its page in the MLflow UI; markdown)."""
    tracker.set_tags(run_id, {TAG_NOTE: text})


def final_metrics(result: Any, wall_s: float, cpu_s: float, **extra: float) -> dict[str, float]:
    """A run's closing metrics at its last step: the final evaluation and ``fitness`` (when it
    finished), its cost and size, and ``extra``; less what its curves already logged at that step."""
    final = {**result.final_metrics, **extra} if not result.failed else {}
    final.update({METRIC_WALL_TIME_S: wall_s, METRIC_CPU_TIME_S: cpu_s, "train_steps": result.steps})
    final["episodes"] = result.episodes
    if not result.failed:
        final[METRIC_FITNESS] = result.fitness
    if result.history and result.history[-1][0] == result.steps:  # logged with the curves already
        final = {k: v for k, v in final.items() if k not in result.history[-1][1]}
    return final


def log_result(tracker: Tracker, run_id: str, result: Any, config: Any, *, artifacts: bool = True) -> None:
    """Record a :class:`~hybridopt.train.result.TrainResult`: curves and final metrics and,
    with ``artifacts``, the resolved config and (when it finished) the weights; then end
    the run with its status."""
    import yaml

    from hybridopt.train.weights import weights_bytes

    tracker.log_history(run_id, result.history)
    tracker.log_history(run_id, [(result.steps, final_metrics(result, result.wall_time, result.cpu_time))])
    if artifacts:
        tracker.log_artifact_bytes(run_id, ARTIFACT_CONFIG, yaml.safe_dump(config.model_dump(mode="json")).encode())
    if artifacts and not result.failed:
        tracker.log_artifact_bytes(run_id, ARTIFACT_WEIGHTS, weights_bytes(config, result.state_dict))
    tracker.end_run(run_id, result.status, result.reason)
