"""The command-line arguments the entry points share: the config a command runs and its
overrides, what a search does with an earlier checkpoint, the tracking store, and how bad
arguments end (one line, exit code 2)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import TYPE_CHECKING, NoReturn, Optional

from hybridopt.errors import UsageError

if TYPE_CHECKING:
    from hybridopt.config import Config

__all__ = [
    "EXIT_BAD_INPUT",
    "OneLineParser",
    "add_config_arguments",
    "add_restart_arguments",
    "add_tracking_uri",
    "load_args_config",
    "search_argv",
]

EXIT_BAD_INPUT = 2


class OneLineParser(argparse.ArgumentParser):
    """A parser whose errors are one line (a :class:`UsageError`), without the usage dump."""

    def error(self, message: str) -> NoReturn:  # one line, no usage dump
        raise UsageError(message)


# Help of the arguments ``hybridopt search`` shares with the cluster entry point, by destination.
_HELP = {
    "config": "YAML config file (see configs/)",
    "overrides": "override a config key, e.g. --set plasticity.input.rule=hebbian (repeatable)",
    "seed": "override the config's seed",
    "resume": "continue from the search's last checkpoint",
    "fresh": "start a new search even where a checkpoint exists (it is replaced)",
}


def add_config_arguments(p: argparse.ArgumentParser, help: Optional[Mapping[str, str]] = None) -> list[argparse.Action]:
    """Declare the config a command runs and how its command line adjusts it: ``config``,
    ``--set KEY.PATH=VALUE`` (repeatable) and ``--seed``.  ``help`` rewords the help of some, by
    destination (the cluster entry point's lookup of the config, say)."""
    text = {**_HELP, **(help or {})}
    return [
        p.add_argument("config", help=text["config"]),
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY.PATH=VALUE",
            help=text["overrides"],
        ),
        p.add_argument("--seed", type=int, default=None, help=text["seed"]),
    ]


def add_restart_arguments(
    p: argparse.ArgumentParser, help: Optional[Mapping[str, str]] = None
) -> list[argparse.Action]:
    """Declare what a search does with an earlier checkpoint: ``--resume`` it or start ``--fresh``
    (at most one of them); ``help`` rewords them, by destination."""
    text = {**_HELP, **(help or {})}
    again = p.add_mutually_exclusive_group()
    return [
        again.add_argument("--resume", action="store_true", help=text["resume"]),
        again.add_argument("--fresh", action="store_true", help=text["fresh"]),
    ]


def search_argv(args: argparse.Namespace) -> list[str]:
    """The ``hybridopt search`` arguments that give ``config``, ``--set``, ``--seed``,
    ``--resume`` and ``--fresh`` the values they have in ``args`` (parsed by a parser that
    :func:`add_config_arguments` and :func:`add_restart_arguments` declared them on); the config first."""
    scratch = argparse.ArgumentParser(add_help=False)
    argv: list[str] = []
    for action in [*add_config_arguments(scratch), *add_restart_arguments(scratch)]:
        value = getattr(args, action.dest)
        if not action.option_strings:
            argv.append(str(value))
        elif action.nargs == 0:  # a switch
            argv += action.option_strings[:1] if value else []
        elif isinstance(value, list):
            argv += [item for v in value for item in (action.option_strings[0], str(v))]
        elif value is not None:
            argv += [action.option_strings[0], str(value)]
    return argv


def add_tracking_uri(p: argparse.ArgumentParser) -> None:
    """Declare ``--tracking-uri``."""
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default sqlite:///mlflow.db)")


def load_args_config(args: argparse.Namespace) -> Config:
    """The config a command line names, with its ``--set`` overrides and ``--seed`` applied."""
    from hybridopt.config import load_config

    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    return load_config(args.config, overrides)
