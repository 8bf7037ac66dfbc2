"""Command line: ``hybridopt train|search|eval|report``, and ``submit|jobs|logs|stop`` from
:mod:`~hybridopt.entry.service`.

Bad input (config, argument, weights file, tracking store) ends with one line on stderr
naming the problem and exit code 2, before anything is written to the store.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

# Only light imports here: arguments are read, and bad ones reported, before torch, Ray or
# MLflow load (each command imports what it needs).
from hybridopt.entry import service
from hybridopt.entry.arguments import (
    EXIT_BAD_INPUT,
    OneLineParser,
    add_config_arguments,
    add_restart_arguments,
    add_tracking_uri,
    load_args_config,
)
from hybridopt.errors import BAD_INPUT, ConfigError, UsageError

if TYPE_CHECKING:
    from hybridopt.config import Config
    from hybridopt.train.result import ProgressEvent, ProgressFn

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="hybridopt", description="Evolution plus gradient search for plastic spiking networks.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    p_train = sub.add_parser("train", help="train one configuration (one MLflow run)")
    add_config_arguments(p_train)
    add_tracking_uri(p_train)
    p_search = sub.add_parser("search", help="evolve rule families and hyper-parameters (nested MLflow runs)")
    add_config_arguments(p_search)
    add_tracking_uri(p_search)
    p_search.add_argument("--address", default=None, help="Ray cluster address ('auto' joins a running cluster)")
    add_restart_arguments(p_search)
    p_eval = sub.add_parser("eval", help="evaluate saved weights on held-out episodes")
    p_eval.add_argument("weights", help="a weights.pt file written by train or search")
    p_report = sub.add_parser("report", help="rank a search's candidates and draw its figures (reads the store only)")
    p_report.add_argument(
        "targets", nargs="+", metavar="EXPERIMENT_OR_RUN", help="experiment names or run ids (several: side by side)"
    )
    add_tracking_uri(p_report)
    p_report.add_argument("--out", default="report", help="folder for the figures (default ./report)")
    p_report.add_argument("--csv", default=None, metavar="FILE", help="also write the ranked candidates as CSV")
    p_report.add_argument("--top", type=int, default=20, help="rows of each ranked table shown (default 20)")
    service.add_parsers(sub)
    return parser


def _run_name(cfg: Config, kind: str) -> str:
    return f"{cfg.task.name}__{kind}__{cfg.seed}__{time.strftime('%Y%m%d-%H%M%S')}"


def _print_metrics(title: str, metrics: dict[str, Any], heading: str = "metric") -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column(heading)
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    Console().print(table)


def _command_line(argv: Optional[list[str]]) -> str:
    import shlex

    return shlex.join(["hybridopt", *(sys.argv[1:] if argv is None else argv)])


def _ui_hint(uri: str, experiment: str) -> str:
    """How to open the results: the ``mlflow ui`` command for a local store, the address of a server."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///")).resolve()
        return f"results: mlflow ui --backend-store-uri sqlite:///{path}   (experiment {experiment!r})"
    if uri.startswith(("http://", "https://")):
        return f"results: {uri}   (experiment {experiment!r})"
    return f"results: mlflow ui --backend-store-uri {uri}   (experiment {experiment!r})"


# What a progress bar shows of a loop's metrics, by name.
_SHOWN = {
    "train/loss": "loss",
    "train/return_mean": "return",
    "eval/accuracy": "eval acc",
    "eval/return/standard": "eval return",
    "best": "best",
}


@contextlib.contextmanager
def _progress_display(stage: str) -> Iterator[ProgressFn]:
    """A progress bar and the function every loop reports to (inner loops and the search alike)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    ) as bar:
        job = bar.add_task(stage, total=None, info="")

        def show(event: ProgressEvent) -> None:
            if event.line is not None:
                bar.console.print(event.line, highlight=False, markup=False, soft_wrap=True)
            if event.done is not None:
                m = event.metrics
                info = "  ".join(f"{label} {m[k]:.4f}" for k, label in _SHOWN.items() if k in m and math.isfinite(m[k]))
                bar.update(job, description=event.stage or stage, completed=event.done, total=event.total, info=info)

        yield show


def cmd_train(args: argparse.Namespace) -> int:
    cfg = load_args_config(args)  # before the heavy imports: a bad config is reported at once
    from hybridopt.tracking import Tracker, log_result, resolve_uri, run_params
    from hybridopt.train import train_candidate

    tracker = Tracker(resolve_uri(args.tracking_uri, cfg.tracking.uri), cfg.tracking.experiment or cfg.experiment)
    run_id = tracker.start_run(_run_name(cfg, "train"), "train", params=run_params(cfg))
    try:
        with _progress_display("train") as progress:
            result = train_candidate(cfg, progress)
    except KeyboardInterrupt:
        tracker.end_run(run_id, "KILLED", "interrupted")
        print("hybridopt: interrupted; run ended as KILLED", file=sys.stderr)
        return 130
    log_result(tracker, run_id, result, cfg)
    from hybridopt.results.report import log_figures_safely

    log_figures_safely(tracker, run_id)
    if result.failed:
        print(f"hybridopt: training failed: {result.reason} (run {run_id})", file=sys.stderr)
        return 1
    _print_metrics("final metrics", {"fitness": result.fitness, **result.final_metrics})
    print(f"run {run_id} in {tracker.uri}")
    print(_ui_hint(tracker.uri, cfg.tracking.experiment or cfg.experiment))
    artifacts = tracker.artifact_uri(run_id)
    if artifacts.startswith("file://"):
        weights = Path(artifacts.removeprefix("file://")) / "weights.pt"
        print(f"weights: {weights}\nevaluate again: hybridopt eval {weights}")
    else:
        print(f"weights: {artifacts}/weights.pt (download it, then: hybridopt eval weights.pt)")
    return 0


def _check_checkpoint(cfg: Config, *, resume: bool, fresh: bool) -> None:
    """Before anything starts: ``--resume`` needs a sound checkpoint of this search, and a new
    search does not silently replace one (it would start a second parent run and lose the way
    back to the first)."""
    from hybridopt.search.checkpoint import CheckpointError, load_checkpoint

    assert cfg.search is not None
    path = Path(cfg.search.checkpoint)
    if resume:
        load_checkpoint(path, cfg.model_dump(mode="json"))
    elif not fresh and path.exists():
        raise CheckpointError(
            f"a checkpoint of an earlier search is at {path}: --resume continues it, --fresh starts over"
        )


def cmd_search(args: argparse.Namespace) -> int:
    from hybridopt.search.genome import GenomeSpace

    cfg = load_args_config(args)  # the config, its genes and the checkpoint are checked before the heavy imports
    if cfg.search is None:
        raise ConfigError(f"{args.config} has no search section")
    GenomeSpace.from_config(cfg.search).validate(cfg)
    _check_checkpoint(cfg, resume=args.resume, fresh=args.fresh)

    from hybridopt.search.dispatch import init_ray
    from hybridopt.search.driver import run_search
    from hybridopt.tracking import Tracker, check_reachable, resolve_uri
    from hybridopt.train.result import ProgressEvent

    uri = resolve_uri(args.tracking_uri, cfg.tracking.uri)
    # Both ends are checked before anything is written: the store answers, then Ray is joined
    # (or started); only then is the store opened (a SQLite store is created by opening it).
    check_reachable(uri)
    init_ray(args.address or cfg.ray.address, cfg.ray.num_cpus, announce=lambda line: print(line, flush=True))
    experiment = cfg.tracking.experiment or cfg.experiment
    tracker = Tracker(uri, experiment)
    with _progress_display("generation") as progress:
        try:
            out = run_search(
                cfg,
                tracker,
                resume=args.resume,
                address=args.address,
                progress=progress,
                command=args.command_line,
                announce=lambda line: progress(ProgressEvent(line=line)),
            )
        except KeyboardInterrupt:
            print("hybridopt: interrupted; search run ended as KILLED (resume with --resume)", file=sys.stderr)
            return 130
    if not out.best_values:
        print(f"hybridopt: every candidate failed (run {out.parent_run_id})", file=sys.stderr)
        return 1
    from hybridopt.results.report import log_figures_safely

    log_figures_safely(tracker, out.parent_run_id)
    _print_metrics(f"best candidate: fitness {out.best_fitness:.4f}", out.best_values, heading="gene")
    print(f"result: {out.result_line()}")
    print(f"search run {out.parent_run_id} ({len(out.records)} candidates) in {tracker.uri}")
    print(_ui_hint(tracker.uri, experiment))
    print(f"table and figures: hybridopt report {experiment} --tracking-uri {tracker.uri}")
    print(
        f"checkpoint: {Path(cfg.search.checkpoint).resolve()} "
        "(to go on: the same command with --resume --set search.generations=N)"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from hybridopt.train.weights import evaluate_weights

    _print_metrics(f"{args.weights}", evaluate_weights(args.weights))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from hybridopt.errors import TrackingError
    from hybridopt.tracking import check_reachable, resolve_uri

    uri = resolve_uri(args.tracking_uri, None)
    check_reachable(uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise TrackingError(f"no tracking store at {uri}")  # reading must not create an empty one
    from hybridopt.results.report import search_table, search_test_line, train_summary, write_report
    from hybridopt.results.store import SearchView

    out = Path(args.out)
    try:
        views = write_report(uri, args.targets, out, Path(args.csv) if args.csv else None)
    except LookupError as e:
        raise UsageError(str(e)) from None
    console = Console(width=None if sys.stdout.isatty() else 200)
    for v in views:
        if isinstance(v, SearchView):
            rows = search_table(v, wide=False)
            table = Table(title=f"{v.experiment}: {v.name} ({v.status}, {len(rows)} candidates)")
            for k in rows[0] if rows else ["candidate"]:
                table.add_column(k, justify="right" if k in ("fitness", "rung", "wall s", "CPU s") else "left")
            for r in rows[: args.top]:
                table.add_row(*r.values())
            console.print(table)
            if search_test_line(v):
                print(f"result: {search_test_line(v)}")
        else:
            _print_metrics(f"{v.experiment}: {v.name} ({v.status})", train_summary(v))
    print(f"figures in {out.resolve()}" + (f", table in {Path(args.csv).resolve()}" if args.csv else ""))
    return 0


COMMANDS = {
    "train": cmd_train,
    "search": cmd_search,
    "eval": cmd_eval,
    "report": cmd_report,
    "submit": service.cmd_submit,
    "jobs": service.cmd_jobs,
    "logs": service.cmd_logs,
    "stop": service.cmd_stop,
}


def main(argv: Optional[list[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.command_line = _command_line(argv)
        return COMMANDS[args.command](args)
    except tuple(BAD_INPUT) as e:
        kind = next(name for cls, name in BAD_INPUT.items() if isinstance(e, cls))
        print(f"hybridopt: {kind}: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
