"""Inner loops: train one configuration and return a :class:`TrainResult`."""

from __future__ import annotations

from typing import Optional

from hybridopt.train.result import ProgressFn, TrainResult, TrainState

__all__ = ["ProgressFn", "TrainResult", "TrainState", "initial_model", "train_candidate"]


def initial_model(cfg) -> dict:
    """The freshly initialised model state a config trains from (a policy's with its empty
    observation statistics): what :class:`TrainState` ``.model`` holds before any training."""
    if cfg.task.name == "locomotion":
        from hybridopt.tasks.locomotion import ObsNormalizer
        from hybridopt.train.es import build_policy, policy_state_dict

        task, net = build_policy(cfg)
        return policy_state_dict(net, ObsNormalizer.identity(task.n_in))
    from hybridopt.train.gradient import build

    _, net = build(cfg)
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}


def train_candidate(
    cfg,
    progress: Optional[ProgressFn] = None,
    *,
    start: Optional[TrainState] = None,
    cpu_budget_s: Optional[float] = None,
) -> TrainResult:
    """Train one configuration with the inner loop its task calls for: search-gradient (ES)
    for control tasks, whose simulator gives no gradient; BPTT for the others.  With ``start``
    it continues from that state, for at most ``cpu_budget_s`` further CPU seconds."""
    if cfg.task.name == "locomotion":
        from hybridopt.train.es import train_es

        return train_es(cfg, progress, start=start, cpu_budget_s=cpu_budget_s)
    from hybridopt.train.gradient import train_gradient

    return train_gradient(cfg, progress, start=start, cpu_budget_s=cpu_budget_s)
