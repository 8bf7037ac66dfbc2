"""Inner loops: train one configuration and return a :class:`TrainResult`."""

from __future__ import annotations

from typing import Optional

from hybridopt.train.result import ProgressFn, TrainResult

__all__ = ["ProgressFn", "TrainResult", "train_candidate"]


def train_candidate(cfg, progress: Optional[ProgressFn] = None) -> TrainResult:
    """Train one configuration with the inner loop its task calls for: search-gradient (ES)
    for control tasks, whose simulator gives no gradient; BPTT for the others."""
    if cfg.task.name == "locomotion":
        from hybridopt.train.es import train_es

        return train_es(cfg, progress)
    from hybridopt.train.gradient import train_gradient

    return train_gradient(cfg, progress)
