"""Candidates on Ray: one remote task per candidate, with the resources it declares.

Workers never touch the tracking store: they return a :class:`TrainResult` (curves,
fitness, weights) and the driver records it.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Optional

import ray

from hybridopt.config import parse_config
from hybridopt.train import TrainResult, TrainState, train_candidate

__all__ = ["RayConnectError", "check_address", "evaluate_candidate", "init_ray", "remote_evaluator"]


class RayConnectError(RuntimeError):
    """Ray could not be started or joined; one line naming the address."""


def evaluate_candidate(config: dict[str, Any], start: Optional[TrainState] = None) -> TrainResult:
    """Train one candidate from its (JSON-able) config, from ``start`` where it inherits a
    trained state; runs inside a Ray worker."""
    return train_candidate(parse_config(config), start=start)


def remote_evaluator(num_cpus: float, num_gpus: float, max_retries: int):
    """The remote version of :func:`evaluate_candidate` with these resources.

    ``max_retries`` re-runs a candidate whose worker process died (a system failure);
    an exception inside training is not retried: it comes back as a FAILED result.
    """
    return ray.remote(evaluate_candidate).options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries)


def check_address(address: str, timeout: float = 5.0) -> None:
    """Fail fast when nothing answers at a cluster address.

    ``ray.init`` retries an unreachable GCS for many minutes, printing as it goes; a TCP connection
    to the address (``HOST:PORT``, ``ray://HOST:PORT``, or the cluster ``auto`` finds on this
    machine) tells within ``timeout`` seconds whether anything listens there."""
    target = address
    if address == "auto":
        from ray._private import services

        try:
            target = services.canonicalize_bootstrap_address(address)
        except Exception as e:  # noqa: BLE001 - ConnectionError when no cluster runs here
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise RayConnectError(f"cannot join Ray at auto: {msg}") from None
        if not target:
            raise RayConnectError("cannot join Ray at auto: no running Ray cluster found on this machine")
    host, sep, port = target.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise RayConnectError(f"bad Ray address {address!r}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        if isinstance(e, TimeoutError):
            reason = f"no answer within {timeout:.0f} s"
        where = address if target == address else f"{address} ({target})"
        raise RayConnectError(f"cannot reach the Ray cluster at {where}: {reason}") from None


def init_ray(address: Optional[str] = None, num_cpus: Optional[int] = None) -> None:
    """Join ``address`` (or ``RAY_ADDRESS``); without one, start a local instance."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        check_address(address)
    try:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    except Exception as e:  # noqa: BLE001 - ray raises ConnectionError, RuntimeError, ...
        where = address or "a local instance"
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RayConnectError(f"cannot start or join Ray at {where}: {msg}") from None
