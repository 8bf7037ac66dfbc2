"""hybridopt: evolution plus gradient descent for plastic spiking neural networks.

``import hybridopt`` loads nothing heavy; the names below load on first use.  The Python API is
:mod:`hybridopt.api` (``search``, ``train``, ``load``, ``evaluate``); a task of one's own is a
:class:`TaskSection` and a class registered with :func:`register_task`, a rule family one
registered with :func:`register_rule`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Stable names, by the module that defines them (imported when first asked for).
_EXPORTS = {
    "api": "hybridopt.api",
    "search": "hybridopt.api",
    "train": "hybridopt.api",
    "load": "hybridopt.api",
    "evaluate": "hybridopt.api",
    "SearchResult": "hybridopt.api",
    "TrainRun": "hybridopt.api",
    "Config": "hybridopt.config",
    "ProgressEvent": "hybridopt.train.result",
    "TaskSection": "hybridopt.tasks.registry",
    "register_task": "hybridopt.tasks.registry",
    "register_rule": "hybridopt.snn.rules",
    "ConfigError": "hybridopt.errors",
    "CheckpointError": "hybridopt.errors",
    "RayConnectError": "hybridopt.errors",
    "TrackingError": "hybridopt.errors",
    "UsageError": "hybridopt.errors",
    "WeightsError": "hybridopt.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hybridopt' has no attribute {name!r}")
    if name == "api":
        return importlib.import_module(module)
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
