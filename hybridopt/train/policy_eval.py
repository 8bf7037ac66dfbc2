"""A locomotion policy measured: its return in every condition, trained on or held out.

See :mod:`hybridopt.train.es` for the equations (fitness, held-out mean, retention, degradation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import numpy as np

from hybridopt.snn.network import PlasticSNN
from hybridopt.tasks.base import ControlTask, ObsNormalizer, eval_seeds
from hybridopt.tasks.conditions import metric_key

__all__ = ["evaluate_policy"]


def evaluate_policy(
    task: ControlTask,
    net: PlasticSNN,
    normalizer: ObsNormalizer,
    seed: int,
    conditions: Optional[Sequence[str]] = None,
    train_conditions: Optional[Sequence[str]] = None,
) -> dict[str, float]:
    """Mean (and std) return over the evaluation seeds in ``standard``, each training condition
    (default ``task.cfg.train_conditions``) and each held-out one (default ``task.cfg.conditions``),
    as ``eval/return/<key>`` with ``key`` the condition's metric name (``weak:back:0.5`` ->
    ``weak_back_0.5``); their means ``eval/return/train`` (the fitness) and ``eval/return/heldout``
    (with held-out conditions); per condition ``eval/retention/<key> = R_c / R_standard`` and
    ``eval/degradation/<key> = (R_standard - R_c) / |R_standard|``, and
    ``eval/retention/heldout = R_heldout / R_standard``.  A retention is NaN when
    ``R_standard = 0`` and a ratio of returns only where ``R_standard > 0``."""
    train = list(task.cfg.train_conditions if train_conditions is None else train_conditions)
    heldout = list(task.cfg.conditions if conditions is None else conditions)
    names = list(dict.fromkeys(["standard", *train, *heldout]))
    seeds = eval_seeds(task.cfg.eval_seeds, seed)
    params = net.params()
    returns: dict[str, float] = {}
    out: dict[str, float] = {}
    for c in names:
        r = task.rollout(net, params, seeds, normalizer, condition=c)
        key = metric_key(c)
        returns[c] = out[f"eval/return/{key}"] = float(r.returns.mean())
        out[f"eval/return_std/{key}"] = float(r.returns.std())
        if c == "standard" and not math.isnan(r.h_saturation):
            out["eval/h_saturation"] = r.h_saturation
    ref = returns["standard"]
    for c in names:
        out[f"eval/retention/{metric_key(c)}"] = _ratio(returns[c], ref)
        out[f"eval/degradation/{metric_key(c)}"] = (ref - returns[c]) / max(abs(ref), 1e-8)
    out["eval/return/train"] = float(np.mean([returns[c] for c in train]))
    if heldout:
        out["eval/return/heldout"] = float(np.mean([returns[c] for c in heldout]))
        out["eval/retention/heldout"] = _ratio(out["eval/return/heldout"], ref)
    return out


def _ratio(r: float, ref: float) -> float:
    return r / ref if ref != 0.0 else math.nan
