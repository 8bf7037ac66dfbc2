"""Candidates on Ray: one remote task per candidate, with the resources it declares.

Workers never touch the tracking store: they return a :class:`TrainResult` (curves,
fitness, weights) and the driver records it.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import ray

from hybridopt.config import parse_config
from hybridopt.train import TrainResult, train_candidate

__all__ = ["RayConnectError", "evaluate_candidate", "init_ray", "remote_evaluator"]


class RayConnectError(RuntimeError):
    """Ray could not be started or joined; one line naming the address."""


def evaluate_candidate(config: dict[str, Any]) -> TrainResult:
    """Train one candidate from its (JSON-able) config; runs inside a Ray worker."""
    return train_candidate(parse_config(config))


def remote_evaluator(num_cpus: float, num_gpus: float, max_retries: int):
    """The remote version of :func:`evaluate_candidate` with these resources.

    ``max_retries`` re-runs a candidate whose worker process died (a system failure);
    an exception inside training is not retried: it comes back as a FAILED result.
    """
    return ray.remote(evaluate_candidate).options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries)


def init_ray(address: Optional[str] = None, num_cpus: Optional[int] = None) -> None:
    """Join ``address`` (or ``RAY_ADDRESS``); without one, start a local instance."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    try:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    except Exception as e:  # noqa: BLE001 - ray raises ConnectionError, RuntimeError, ...
        where = address or "a local instance"
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RayConnectError(f"cannot start or join Ray at {where}: {msg}") from None
