"""Plastic spiking networks: LIF neurons, plasticity rules, the network.

The names below load on first use, so that :mod:`hybridopt.snn.catalogue` (what a config is
validated against) can be imported without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["MODES", "RULES", "NetworkSpec", "PlasticSNN", "ProjectionSpec"]

_WHERE = {
    "NetworkSpec": "network",
    "PlasticSNN": "network",
    "ProjectionSpec": "network",
    "MODES": "plasticity",
    "RULES": "plasticity",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"hybridopt.snn.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'hybridopt.snn' has no attribute {name!r}")
