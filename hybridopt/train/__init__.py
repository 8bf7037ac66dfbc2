"""Inner loops: train one configuration and return a :class:`TrainResult`; the loop a config
trains with is its task's kind's (:mod:`hybridopt.train.loops`)."""

from __future__ import annotations

from typing import Any, Optional

from hybridopt.config import Config
from hybridopt.train.loops import LOOPS, InnerLoop, inner_loop
from hybridopt.train.result import ProgressEvent, ProgressFn, TrainResult, TrainState

__all__ = [
    "LOOPS",
    "InnerLoop",
    "ProgressEvent",
    "ProgressFn",
    "TrainResult",
    "TrainState",
    "initial_model",
    "inner_loop",
    "train_candidate",
]


def initial_model(cfg: Config) -> dict[str, Any]:
    """The freshly initialised model state a config trains from (a policy's with its empty
    observation statistics): what :class:`TrainState` ``.model`` holds before any training."""
    return inner_loop(cfg).initial_model(cfg)


def train_candidate(
    cfg: Config,
    progress: Optional[ProgressFn] = None,
    *,
    start: Optional[TrainState] = None,
    cpu_budget_s: Optional[float] = None,
) -> TrainResult:
    """Train one configuration with the inner loop its task calls for: search-gradient (ES)
    for control tasks, whose simulator gives no gradient; BPTT for the others.  With ``start``
    it continues from that state, for at most ``cpu_budget_s`` further CPU seconds."""
    return inner_loop(cfg).train(cfg, progress, start=start, cpu_budget_s=cpu_budget_s)
