"""Candidates on Ray: a pool of long-lived actors, one per candidate slot.

The only module of the search that imports Ray.  Each actor is a worker process that trains one
candidate at a time (:func:`~hybridopt.train.train_candidate`), so what a process builds once
(imported modules, compiled kernels, caches) serves every candidate it trains.  Jobs are queued
and handed to the first free actor; results come back as they complete.  An actor that dies
(its process killed, its node lost) is replaced where the cluster still has room for it (a lost
node's slots are given up), and its job runs again on the next free actor, up to
``ray.max_retries`` times; an error inside training is not retried: it comes back as a FAILED
result.  Workers never touch the tracking store.  The pool notes when an actor takes a job and
how long it was queued (:meth:`Pool.taken`), so that a candidate's run starts when it trains.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Optional

import ray
from ray.exceptions import RayActorError, RayError

from hybridopt.config import parse_config
from hybridopt.errors import RayConnectError
from hybridopt.search.halving import Taken
from hybridopt.train import TrainResult, TrainState, train_candidate

__all__ = [
    "STOP",
    "Pool",
    "RayConnectError",
    "check_address",
    "init_ray",
    "slots_for",
    "stop_on_signals",
    "train_remote",
]


def train_remote(config: dict[str, Any], start: Optional[TrainState], cpu_budget_s: Optional[float]) -> TrainResult:
    """Train one candidate from its (JSON-able) config; what an actor runs."""
    return train_candidate(parse_config(config), start=start, cpu_budget_s=cpu_budget_s)


@ray.remote
class CandidateWorker:
    """A candidate slot: trains one candidate per call, in one long-lived process; each result
    says which node trained it (the node's IP address, as Ray knows it)."""

    def __init__(self) -> None:
        self.node = ray.util.get_node_ip_address()

    def train(self, config: dict[str, Any], start: Optional[TrainState], cpu_budget_s: Optional[float]):
        result = train_remote(config, start, cpu_budget_s)
        result.node = self.node
        return result

    def pid(self) -> int:
        return os.getpid()


@dataclass
class _Job:
    key: Hashable
    config: dict[str, Any]
    start: Optional[TrainState]
    cpu_budget_s: Optional[float]
    queued_at: float = 0.0  # seconds since the epoch
    attempts: int = 0


# Set by the driver's SIGINT/SIGTERM handler (the reason); the search stops at its next wait for a
# result, never in the middle of a write to the store.
STOP: list[str] = []


class Pool:
    """``slots`` actors with the resources a candidate declares; jobs run first come, first served.

    ``submit(key, config, start, cpu_budget_s)`` queues a job; ``taken()`` says which jobs actors
    took since it was last asked; ``next_result()`` blocks until one completes and returns
    ``(key, TrainResult)``."""

    def __init__(self, slots: int, num_cpus: float, num_gpus: float, max_retries: int):
        if slots < 1:
            raise ValueError(f"a pool needs at least one slot, got {slots}")
        self._options = {"num_cpus": num_cpus, "num_gpus": num_gpus}
        self.max_retries = max_retries
        self._idle = [self._new_actor() for _ in range(slots)]
        self._queue: collections.deque[_Job] = collections.deque()
        self._running: dict[Any, tuple[Any, _Job]] = {}  # object ref -> (actor, job)
        self._taken: list[Taken] = []
        self.replaced = 0  # actors that died (replaced where the cluster has room)

    def _new_actor(self):
        return CandidateWorker.options(**self._options).remote()

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        return len(self._queue) + len(self._running)

    def submit(
        self, key: Hashable, config: dict[str, Any], start: Optional[TrainState], cpu_budget_s: Optional[float]
    ) -> None:
        self._queue.append(_Job(key, config, start, cpu_budget_s, time.time()))
        self._dispatch()

    def taken(self) -> list[Taken]:
        """The jobs actors took since the last call, in order (a retried job again)."""
        out, self._taken = self._taken, []
        return out

    def _dispatch(self) -> None:
        while self._idle and self._queue:
            actor, job = self._idle.pop(), self._queue.popleft()
            job.attempts += 1
            now = time.time()
            self._taken.append(Taken(job.key, now, now - job.queued_at))
            self._running[actor.train.remote(job.config, job.start, job.cpu_budget_s)] = (actor, job)

    def _replace_actor(self) -> None:
        """A new actor for one that died, if the cluster has room for it now.  An actor lost with
        its node has nowhere to go: a new one would wait for resources that no longer exist, and
        the job handed to it with it, so the pool goes on with one slot fewer (never none)."""
        live = len(self._idle) + len(self._running)
        if live == 0 or live < slots_for(self._options["num_cpus"], self._options["num_gpus"]):
            self._idle.append(self._new_actor())

    def next_result(self) -> tuple[Hashable, TrainResult]:
        """The next job to complete (a FAILED result for one whose actor died too often)."""
        while True:
            if not self._running:
                raise RuntimeError("no job is running")
            ready: list = []
            while not ready:  # in short waits, so that a stop request is seen within half a second
                if STOP:
                    raise KeyboardInterrupt(STOP[0])
                ready, _ = ray.wait(list(self._running), num_returns=1, timeout=0.5)
            (ref,) = ready
            actor, job = self._running.pop(ref)
            try:
                result: TrainResult = ray.get(ref)
            except RayActorError as e:  # the process died: a new actor in its slot, the job again
                self.replaced += 1
                self._replace_actor()
                if job.attempts <= self.max_retries:
                    job.queued_at = time.time()
                    self._queue.appendleft(job)
                    self._dispatch()
                    continue
                result = TrainResult.failure(f"worker failed after {self.max_retries} retries: {_first_line(e)}")
                self._dispatch()
                return job.key, result
            except RayError as e:
                result = TrainResult.failure(f"worker error: {_first_line(e)}")
            self._idle.append(actor)
            self._dispatch()
            return job.key, result

    def close(self) -> None:
        """Stop the actors (queued jobs are dropped)."""
        self._queue.clear()
        for actor in [*self._idle, *(a for a, _ in self._running.values())]:
            ray.kill(actor, no_restart=True)
        self._idle.clear()
        self._running.clear()
        self._taken.clear()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def slots_for(num_cpus: float, num_gpus: float) -> int:
    """How many candidates the cluster (or local Ray) can train at once with these resources."""
    res = ray.cluster_resources()
    fits = [int(res.get("CPU", 1) // num_cpus)] if num_cpus > 0 else []
    if num_gpus > 0:
        fits.append(int(res.get("GPU", 0) // num_gpus))
    return max(1, min(fits) if fits else 1)


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
            raise RayConnectError(f"cannot join Ray at auto: {_first_line(e)}") from None
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


def init_ray(
    address: Optional[str] = None, num_cpus: Optional[int] = None, announce: Optional[Callable[[str], None]] = None
) -> None:
    """Join ``address`` (or ``RAY_ADDRESS``); without one, start a local instance.  ``announce``
    is told which, once the address answers (starting or joining takes seconds)."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        check_address(address)
    if announce is not None:
        local = f"starting local Ray with {num_cpus or os.cpu_count()} CPUs ..."
        announce(f"joining Ray at {address} ..." if address else local)
    try:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    except Exception as e:  # noqa: BLE001 - ray raises ConnectionError, RuntimeError, ...
        where = address or "a local instance"
        raise RayConnectError(f"cannot start or join Ray at {where}: {_first_line(e)}") from None


def _stop(signum: int, frame: Any) -> None:
    STOP.append("interrupted" if signum == signal.SIGINT else f"terminated ({signal.Signals(signum).name})")


def stop_on_signals() -> None:
    """Ctrl-C and SIGTERM (``kill``, a job manager stopping the driver) end the search the same way:
    the parent and the candidates under way KILLED, the checkpoint kept for ``--resume``.  The
    handler only records the request; the search stops at its next wait for a result (within half
    a second), never in the middle of a write to the store.  Installed after Ray is up (whose
    own SIGTERM handler would exit the process mid-write)."""
    if threading.current_thread() is threading.main_thread():
        STOP.clear()
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is not signal.SIG_IGN:
                signal.signal(sig, _stop)
