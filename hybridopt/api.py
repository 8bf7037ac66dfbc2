"""The Python API: run a search or a training from Python, get its candidates as a table, load
the winner.  The command line is a thin layer over it.

    from hybridopt import api

    result = api.search("configs/smoke_search.yaml", overrides=["search.generations=1"])
    table = result.candidates()            # a pandas DataFrame, one row per candidate
    cfg, task, net = api.load(result.best_weights())

A config is a YAML path, a plain mapping or a :class:`~hybridopt.config.Config`; ``overrides``
are ``KEY.PATH=VALUE`` strings as ``--set`` takes them.  Bad input raises the one-line errors of
:mod:`hybridopt.errors` (:class:`ConfigError`, :class:`TrackingError`, :class:`RayConnectError`,
:class:`CheckpointError`, :class:`WeightsError`) before anything is written to the store.
Nothing is printed: progress goes to the ``progress`` callback (:func:`print_progress` prints
what the command line prints between its progress bars).  ``plugins`` names modules that
register rule families or tasks of their own; they join ``HYBRIDOPT_PLUGINS``, so that Ray's
workers import them too.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from hybridopt.config import Config, ConfigError, load_config, parse_config
from hybridopt.errors import CheckpointError, WeightsError
from hybridopt.snn.catalogue import PLUGINS_ENV
from hybridopt.stored_names import ARTIFACT_WEIGHTS
from hybridopt.train.result import ProgressEvent, ProgressFn

if TYPE_CHECKING:
    import pandas as pd

    from hybridopt.search.outcome import SearchOutcome
    from hybridopt.snn.network import PlasticSNN

__all__ = [
    "ConfigLike",
    "SearchResult",
    "TrainRun",
    "evaluate",
    "load",
    "load_plugins",
    "print_progress",
    "resolve_config",
    "search",
    "train",
]

ConfigLike = Union[str, Path, Mapping[str, Any], Config]


def load_plugins(names: Sequence[str]) -> None:
    """Add modules to ``HYBRIDOPT_PLUGINS`` (this process, and the Ray workers it starts) and import
    them; one that cannot be imported is a :class:`ConfigError`."""
    from hybridopt.snn.catalogue import load_plugins as import_plugins

    before = os.environ.get(PLUGINS_ENV)
    have = [m.strip() for m in (before or "").split(",") if m.strip()]
    os.environ[PLUGINS_ENV] = ",".join(have + [n for n in names if n not in have])
    try:
        import_plugins()
    except ConfigError:  # a module that cannot be imported is not kept for the workers
        if before is None:
            del os.environ[PLUGINS_ENV]
        else:
            os.environ[PLUGINS_ENV] = before
        raise


def resolve_config(
    config: ConfigLike, overrides: Sequence[str] = (), seed: Optional[int] = None, plugins: Sequence[str] = ()
) -> Config:
    """The validated config: ``config`` with ``overrides`` (``KEY.PATH=VALUE``) and ``seed`` applied."""
    load_plugins(plugins)
    extra = [*overrides, *([f"seed={seed}"] if seed is not None else [])]
    if isinstance(config, (str, Path)):
        return load_config(config, extra)
    if isinstance(config, Config):
        return parse_config(config.model_dump(mode="json"), extra) if extra else config
    if isinstance(config, Mapping):
        return parse_config(dict(config), extra)
    raise ConfigError(f"config must be a YAML path, a mapping or a Config, not {type(config).__name__}")


def print_progress(event: ProgressEvent) -> None:
    """A progress callback that prints each line a run reports (a candidate stops, Ray starts)."""
    if event.line is not None:
        print(event.line, flush=True)


def _read_weights(uri: str, run_id: str, into: Optional[Union[str, Path]]) -> Path:
    """A run's ``weights.pt`` artifact as a file (``into``, or a new temporary one)."""
    from hybridopt.tracking import store_client

    client = store_client(uri)
    folder = Path(into) if into is not None else Path(tempfile.mkdtemp(prefix="hybridopt-weights-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return Path(client.download_artifacts(run_id, ARTIFACT_WEIGHTS, str(folder)))
    except Exception as e:  # noqa: BLE001 - MLflow raises its own kinds for a missing artifact
        raise WeightsError(f"run {run_id} in {uri} has no {ARTIFACT_WEIGHTS}: {str(e).splitlines()[0]}") from None


@dataclass
class SearchResult:
    """A finished search: its parent run, the best genome and fitness (``None``: every candidate
    failed), and the way to its candidates and its winner."""

    parent_run_id: str
    experiment: str
    tracking_uri: str
    config: Config
    best_genome: dict[str, Any]
    best_fitness: Optional[float]
    summary: str = ""  # the result in words: test accuracy beside the selection fitness
    outcome: Optional[SearchOutcome] = field(default=None, repr=False)

    @property
    def failed(self) -> bool:
        """Every candidate failed: there is no winner."""
        return self.best_fitness is None

    def candidates(self) -> pd.DataFrame:
        """Every candidate, as the store holds it: one row each, in the order they were made
        (``generation``, ``candidate``), with its genes (a column per gene path), ``fitness``
        (NaN for a failed one), ``status``, ``rung``, ``run_id``, ``inherited_from`` (the run whose
        state it started from), ``wall_s`` and ``cpu_s``."""
        import pandas as pd

        from hybridopt.results.store import SearchView, find

        (view,) = [v for v in find(self.tracking_uri, self.parent_run_id) if isinstance(v, SearchView)]
        genes = view.genes
        rows = [
            {
                "generation": c.generation,
                "candidate": c.index,
                **{g: c.genome.get(g) for g in genes},
                "fitness": float("nan") if c.fitness is None else c.fitness,
                "status": c.status,
                "rung": c.rung,
                "run_id": c.run_id,
                "inherited_from": c.inherited_from,
                "wall_s": c.wall_s,
                "cpu_s": c.cpu_s,
            }
            for c in view.candidates
        ]
        columns = ["generation", "candidate", *genes, "fitness", "status", "rung", "run_id", "inherited_from"]
        return pd.DataFrame(rows, columns=[*columns, "wall_s", "cpu_s"])

    def best_config(self) -> Config:
        """The config that trains the best genome."""
        from hybridopt.search.genome import GenomeSpace

        if self.failed or self.config.search is None:
            raise LookupError(f"search {self.parent_run_id} has no best candidate")
        return GenomeSpace.from_config(self.config.search).config_for(self.config, self.best_genome)

    def best_weights(self, into: Optional[Union[str, Path]] = None) -> Path:
        """The winner's ``weights.pt`` (with its config), fetched from the store into ``into``
        (default: a new temporary folder); :func:`load` and :func:`evaluate` take it."""
        if self.failed:
            raise LookupError(f"search {self.parent_run_id} has no best candidate")
        return _read_weights(self.tracking_uri, self.parent_run_id, into)

    def best_network(self) -> PlasticSNN:
        """The winner's trained network (see :func:`load` for its config and task too)."""
        return load(self.best_weights())[2]


@dataclass
class TrainRun:
    """A finished training run: its MLflow run, fitness and final metrics (its evaluation, and its
    cost: ``cpu_time_s``, ``wall_time_s``, ``train_steps``, ``episodes``), and its weights."""

    run_id: str
    experiment: str
    tracking_uri: str
    config: Config
    fitness: Optional[float]  # None: training failed (``reason`` says why)
    metrics: dict[str, float]
    status: str = "FINISHED"
    reason: Optional[str] = None
    artifact_uri: str = ""  # where its weights.pt and figures are
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list, repr=False)

    @property
    def failed(self) -> bool:
        return self.status != "FINISHED"

    def curves(self) -> pd.DataFrame:
        """The learning curves: one row per logged step, a column per metric."""
        import pandas as pd

        return pd.DataFrame([{"step": step, **m} for step, m in self.history])

    def weights(self, into: Optional[Union[str, Path]] = None) -> Path:
        """The run's ``weights.pt``, fetched from the store into ``into`` (default: a temporary folder)."""
        return _read_weights(self.tracking_uri, self.run_id, into)

    def network(self) -> PlasticSNN:
        """The trained network."""
        return load(self.weights())[2]


def _store(cfg: Config, tracking_uri: Optional[str]) -> tuple[str, str]:
    """The store a run logs to (it answers: checked) and its experiment."""
    from hybridopt.tracking import check_reachable, resolve_uri

    uri = resolve_uri(tracking_uri, cfg.tracking.uri)
    check_reachable(uri)
    return uri, cfg.tracking.experiment or cfg.experiment


def train(
    config: ConfigLike,
    *,
    overrides: Sequence[str] = (),
    seed: Optional[int] = None,
    tracking_uri: Optional[str] = None,
    progress: Optional[ProgressFn] = None,
    plugins: Sequence[str] = (),
    run_name: Optional[str] = None,
) -> TrainRun:
    """Train one configuration: one MLflow run (``hybridopt.kind=train``) with its params, curves,
    ``fitness``, weights and figures.  A failure inside training is a run that ends FAILED
    (``TrainRun.failed``), not an exception; Ctrl-C ends the run KILLED and raises."""
    import time

    cfg = resolve_config(config, overrides, seed, plugins)
    uri, experiment = _store(cfg, tracking_uri)
    from hybridopt.results.report import log_figures_safely
    from hybridopt.tracking import Tracker, log_result, run_params
    from hybridopt.train import train_candidate

    tracker = Tracker(uri, experiment)
    name = run_name or f"{cfg.task.name}__train__{cfg.seed}__{time.strftime('%Y%m%d-%H%M%S')}"
    run_id = tracker.start_run(name, "train", params=run_params(cfg))
    try:
        result = train_candidate(cfg, progress)
    except KeyboardInterrupt:
        tracker.end_run(run_id, "KILLED", "interrupted")
        raise
    log_result(tracker, run_id, result, cfg)
    log_figures_safely(tracker, run_id)
    fitness = None if result.failed else result.fitness
    return TrainRun(
        run_id, experiment, tracker.uri, cfg, fitness, {**result.final_metrics, **_cost(result)}, result.status,
        result.reason,
        tracker.artifact_uri(run_id), list(result.history),
    )  # fmt: skip


def _cost(result) -> dict[str, float]:
    """What a run spent, as its closing metrics name it."""
    from hybridopt.stored_names import METRIC_CPU_TIME_S, METRIC_WALL_TIME_S

    return {
        METRIC_CPU_TIME_S: result.cpu_time,
        METRIC_WALL_TIME_S: result.wall_time,
        "train_steps": float(result.steps),
        "episodes": float(result.episodes),
    }


def _check_checkpoint(cfg: Config, *, resume: bool, fresh: bool) -> None:
    """``resume`` needs a sound checkpoint of this search; a new search does not silently replace
    one (it would start a second parent run and lose the way back to the first)."""
    from hybridopt.search.checkpoint import load_checkpoint

    assert cfg.search is not None
    path = Path(cfg.search.checkpoint)
    if resume and fresh:
        raise CheckpointError("resume and fresh exclude each other")
    if resume:
        load_checkpoint(path, cfg.model_dump(mode="json"))
    elif not fresh and path.exists():
        raise CheckpointError(
            f"a checkpoint of an earlier search is at {path}: --resume continues it, --fresh starts over"
        )


def search(
    config: ConfigLike,
    *,
    overrides: Sequence[str] = (),
    seed: Optional[int] = None,
    address: Optional[str] = None,
    tracking_uri: Optional[str] = None,
    resume: bool = False,
    fresh: bool = False,
    progress: Optional[ProgressFn] = None,
    plugins: Sequence[str] = (),
    command: Optional[str] = None,
) -> SearchResult:
    """Run (``resume``: continue) the search a config describes, on local Ray or the cluster at
    ``address`` (``"auto"``, or ``RAY_ADDRESS``); a parent run with a child run per candidate in
    the store at ``tracking_uri`` (default ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``).

    The config, its genes, the checkpoint, the store and Ray are checked before anything is
    written.  Where the config's checkpoint exists, ``resume=True`` continues that search and
    ``fresh=True`` starts a new one (replacing it); neither is a :class:`CheckpointError`.
    ``progress`` gets a :class:`~hybridopt.train.result.ProgressEvent` as candidates advance and
    one with a ``line`` as each stops; ``command`` is kept on the parent run to reproduce it.
    Ctrl-C ends the parent run as KILLED and raises ``KeyboardInterrupt``."""
    from hybridopt.search.genome import GenomeSpace

    cfg = resolve_config(config, overrides, seed, plugins)
    if cfg.search is None:
        raise ConfigError("the config has no search section")
    GenomeSpace.from_config(cfg.search).validate(cfg)
    _check_checkpoint(cfg, resume=resume, fresh=fresh)
    uri, experiment = _store(cfg, tracking_uri)

    from hybridopt.results.report import log_figures_safely
    from hybridopt.search.dispatch import init_ray
    from hybridopt.search.driver import run_search
    from hybridopt.tracking import Tracker

    def say(line: str) -> None:
        if progress is not None:
            progress(ProgressEvent(line=line))

    # Joined (or started) before the store is opened: a SQLite store is created by opening it.
    init_ray(address or cfg.ray.address, cfg.ray.num_cpus, announce=say)
    tracker = Tracker(uri, experiment)
    main = threading.current_thread() is threading.main_thread()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        out = run_search(cfg, tracker, resume=resume, address=address, progress=progress, command=command, announce=say)
    finally:  # the search's own Ctrl-C handling ends with it (a notebook's kernel gets its own back)
        for sig, handler in handlers.items():
            if handler is not None:
                signal.signal(sig, handler)
    if out.best_values:
        log_figures_safely(tracker, out.parent_run_id)
    best = out.best_fitness if out.best_values else None
    summary = out.result_line() if out.best_values else ""
    return SearchResult(out.parent_run_id, experiment, tracker.uri, cfg, dict(out.best_values), best, summary, out)


def load(weights: Union[str, Path]) -> tuple[Config, Any, PlasticSNN]:
    """Rebuild ``(config, task, trained network)`` from a ``weights.pt`` written by a run."""
    from hybridopt.train.weights import load_weights

    return load_weights(weights)


def evaluate(weights: Union[str, Path]) -> dict[str, float]:
    """Evaluate a ``weights.pt`` the way training evaluated it: held-out episodes (a control
    task: the standard and every novel condition)."""
    from hybridopt.train.weights import evaluate_weights

    return evaluate_weights(weights)
