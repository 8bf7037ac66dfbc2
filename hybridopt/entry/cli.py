"""Command line: ``hybridopt train|search|eval|report``, and ``submit|jobs|logs|stop`` from
:mod:`~hybridopt.entry.service`.  ``train``, ``search`` and ``eval`` are :mod:`hybridopt.api`
with a progress display and a summary in the terminal.

Bad input (config, argument, weights file, tracking store) ends with one line on stderr
naming the problem and exit code 2, before anything is written to the store.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
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

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    job = bar.add_task(stage, total=None, info="")

    def show(event: ProgressEvent) -> None:
        if not bar.live.is_started:  # shown from the first event on: bad input before it is one line alone
            bar.start()
        if event.line is not None:
            bar.console.print(event.line, highlight=False, markup=False, soft_wrap=True)
        if event.done is not None:
            m = event.metrics
            info = "  ".join(f"{label} {m[k]:.4f}" for k, label in _SHOWN.items() if k in m and math.isfinite(m[k]))
            bar.update(job, description=event.stage or stage, completed=event.done, total=event.total, info=info)

    try:
        yield show
    finally:
        if bar.live.is_started:
            bar.stop()


def cmd_train(args: argparse.Namespace) -> int:
    from hybridopt import api

    cfg = load_args_config(args)  # before the heavy imports: a bad config is reported at once
    try:
        with _progress_display("train") as progress:
            run = api.train(cfg, tracking_uri=args.tracking_uri, progress=progress)
    except KeyboardInterrupt:
        print("hybridopt: interrupted; run ended as KILLED", file=sys.stderr)
        return 130
    if run.failed:
        print(f"hybridopt: training failed: {run.reason} (run {run.run_id})", file=sys.stderr)
        return 1
    _print_metrics("final metrics", {"fitness": run.fitness, **run.metrics})
    print(f"run {run.run_id} in {run.tracking_uri}")
    print(_ui_hint(run.tracking_uri, run.experiment))
    if run.artifact_uri.startswith("file://"):
        weights = Path(run.artifact_uri.removeprefix("file://")) / "weights.pt"
        print(f"weights: {weights}\nevaluate again: hybridopt eval {weights}")
    else:
        print(f"weights: {run.artifact_uri}/weights.pt (download it, then: hybridopt eval weights.pt)")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from hybridopt import api

    cfg = load_args_config(args)  # the config, its genes and the checkpoint are checked before the heavy imports
    if cfg.search is None:
        raise ConfigError(f"{args.config} has no search section")
    with _progress_display("generation") as progress:
        try:
            result = api.search(
                cfg,
                address=args.address,
                tracking_uri=args.tracking_uri,
                resume=args.resume,
                fresh=args.fresh,
                progress=progress,
                command=args.command_line,
            )
        except KeyboardInterrupt:
            print("hybridopt: interrupted; search run ended as KILLED (resume with --resume)", file=sys.stderr)
            return 130
    if result.failed:
        print(f"hybridopt: every candidate failed (run {result.parent_run_id})", file=sys.stderr)
        return 1
    assert result.best_fitness is not None and result.outcome is not None
    _print_metrics(f"best candidate: fitness {result.best_fitness:.4f}", result.best_genome, heading="gene")
    print(f"result: {result.summary}")
    print(f"search run {result.parent_run_id} ({len(result.outcome.records)} candidates) in {result.tracking_uri}")
    print(_ui_hint(result.tracking_uri, result.experiment))
    print(f"table and figures: hybridopt report {result.experiment} --tracking-uri {result.tracking_uri}")
    print(
        f"checkpoint: {Path(cfg.search.checkpoint).resolve()} "
        "(to go on: the same command with --resume --set search.generations=N)"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from hybridopt import api

    _print_metrics(f"{args.weights}", api.evaluate(args.weights))
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
