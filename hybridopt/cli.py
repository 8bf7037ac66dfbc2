"""Command line: ``hybridopt train|search|eval``.

Bad input (config, argument, weights file, tracking store) ends with one line on stderr
naming the problem and exit code 2, before anything is written to the store.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, Optional

# Only light imports here: arguments are read, and bad ones reported, before torch, Ray or
# MLflow load (each command imports what it needs).
from hybridopt.errors import BAD_INPUT, ConfigError, UsageError

if TYPE_CHECKING:
    from hybridopt.config import Config

__all__ = ["main"]

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage dump
        raise UsageError(message)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file (see configs/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a config key, e.g. --set plasticity.input.rule=hebbian (repeatable)",
    )
    p.add_argument("--seed", type=int, default=None, help="override the config's seed")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default sqlite:///mlflow.db)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hybridopt", description="Evolution plus gradient search for plastic spiking networks.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p_train = sub.add_parser("train", help="train one configuration (one MLflow run)")
    _common(p_train)
    p_search = sub.add_parser("search", help="evolve rule families and hyper-parameters (nested MLflow runs)")
    _common(p_search)
    p_search.add_argument("--address", default=None, help="Ray cluster address ('auto' joins a running cluster)")
    again = p_search.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from the search's last checkpoint")
    again.add_argument(
        "--fresh", action="store_true", help="start a new search even where a checkpoint exists (it is replaced)"
    )
    p_eval = sub.add_parser("eval", help="evaluate saved weights on held-out episodes")
    p_eval.add_argument("weights", help="a weights.pt file written by train or search")
    return parser


def _load(args: argparse.Namespace) -> Config:
    from hybridopt.config import load_config

    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    return load_config(args.config, overrides)


def _run_name(cfg: Config, kind: str) -> str:
    return f"{cfg.task.name}__{kind}__{cfg.seed}__{time.strftime('%Y%m%d-%H%M%S')}"


def _print_metrics(title: str, metrics: dict[str, float]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    Console().print(table)


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _load(args)  # before the heavy imports: a bad config is reported at once
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from hybridopt.config import flatten
    from hybridopt.tracking import Tracker, log_result, resolve_uri
    from hybridopt.train import train_candidate

    tracker = Tracker(resolve_uri(args.tracking_uri, cfg.tracking.uri), cfg.tracking.experiment or cfg.experiment)
    run_id = tracker.start_run(_run_name(cfg, "train"), "train", params=flatten(cfg))
    try:
        with Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            transient=False,
        ) as bar:
            # Locomotion trains by ES: its steps are generations, its curves returns.
            total = cfg.es.generations if cfg.task.name == "locomotion" else cfg.train.steps
            job = bar.add_task("train", total=total, info="")
            shown = {
                "train/loss": "loss",
                "train/return_mean": "return",
                "eval/accuracy": "eval acc",
                "eval/return/standard": "eval return",
            }

            def progress(step: int, m: dict[str, float]) -> None:
                info = "  ".join(f"{label} {m[k]:.3f}" for k, label in shown.items() if k in m)
                bar.update(job, completed=step, info=info)

            result = train_candidate(cfg, progress)
    except KeyboardInterrupt:
        tracker.end_run(run_id, "KILLED", "interrupted")
        print("hybridopt: interrupted; run ended as KILLED", file=sys.stderr)
        return 130
    log_result(tracker, run_id, result, cfg)
    if result.failed:
        print(f"hybridopt: training failed: {result.reason} (run {run_id})", file=sys.stderr)
        return 1
    _print_metrics("final metrics", {"fitness": result.fitness, **result.final_metrics})
    print(f"run {run_id} in {tracker.uri}")
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

    cfg = _load(args)  # the config, its genes and the checkpoint are checked before the heavy imports
    if cfg.search is None:
        raise ConfigError(f"{args.config} has no search section")
    GenomeSpace.from_config(cfg.search).validate(cfg)
    _check_checkpoint(cfg, resume=args.resume, fresh=args.fresh)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from hybridopt.search.dispatch import init_ray
    from hybridopt.search.evolution import run_search
    from hybridopt.tracking import Tracker, check_reachable, resolve_uri

    uri = resolve_uri(args.tracking_uri, cfg.tracking.uri)
    # Both ends are checked before anything is written: the store answers, then Ray is joined
    # (or started); only then is the store opened (a SQLite store is created by opening it).
    check_reachable(uri)
    init_ray(args.address or cfg.ray.address, cfg.ray.num_cpus)
    tracker = Tracker(uri, cfg.tracking.experiment or cfg.experiment)
    gens = cfg.search.generations
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("best {task.fields[best]}"),
        TimeElapsedColumn(),
    ) as bar:
        job = bar.add_task("generation", total=None, best="-")

        def progress(generation: int, done: int, total: int, best: float) -> None:
            best_s = "-" if best != best else f"{best:.4f}"
            bar.update(job, description=f"generation {generation + 1}/{gens}", completed=done, total=total, best=best_s)

        try:
            out = run_search(cfg, tracker, resume=args.resume, address=args.address, progress=progress)
        except KeyboardInterrupt:
            print("hybridopt: interrupted; search run ended as KILLED (resume with --resume)", file=sys.stderr)
            return 130
    if not out.best_values:
        print(f"hybridopt: every candidate failed (run {out.parent_run_id})", file=sys.stderr)
        return 1
    _print_metrics("best candidate", {"fitness": out.best_fitness, **out.best_values})
    print(f"search run {out.parent_run_id} in {tracker.uri} ({len(out.records)} candidates)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from hybridopt.train.weights import evaluate_weights

    _print_metrics(f"{args.weights}", evaluate_weights(args.weights))
    return 0


COMMANDS = {"train": cmd_train, "search": cmd_search, "eval": cmd_eval}


def main(argv: Optional[list[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except tuple(BAD_INPUT) as e:
        kind = next(name for cls, name in BAD_INPUT.items() if isinstance(e, cls))
        print(f"hybridopt: {kind}: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
