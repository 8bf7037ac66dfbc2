"""The errors bad input raises, each a one-line message, and the CLI's table of them.

Light on purpose (no torch, Ray or MLflow import): the command line reads its arguments and
reports bad ones before any of those load."""

from __future__ import annotations

__all__ = [
    "BAD_INPUT",
    "CheckpointError",
    "ConfigError",
    "RayConnectError",
    "TrackingError",
    "UsageError",
    "WeightsError",
]


class UsageError(Exception):
    """Bad command-line input."""


class ConfigError(ValueError):
    """A bad configuration; its message is one line naming the problem."""


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message is one line naming the problem."""


class WeightsError(ValueError):
    """A weights file that cannot be used; one line naming the problem."""


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged or written for another search; one line."""


class RayConnectError(RuntimeError):
    """Ray could not be started or joined; one line naming the address."""


# How the command line names each kind of bad input (every one ends with exit code 2).
BAD_INPUT: dict[type[Exception], str] = {
    UsageError: "error",
    ConfigError: "config error",
    TrackingError: "tracking error",
    WeightsError: "weights error",
    CheckpointError: "checkpoint error",
    RayConnectError: "ray error",
}
