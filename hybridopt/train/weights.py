"""Trained weights on disk: the state dict together with the config that rebuilds the network."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Union

import torch

from hybridopt.config import Config, ConfigError, parse_config
from hybridopt.errors import WeightsError
from hybridopt.safeload import load_data
from hybridopt.snn.network import PlasticSNN
from hybridopt.tasks import Task

__all__ = ["WeightsError", "evaluate_weights", "load_weights", "weights_bytes"]

FORMAT = "hybridopt.weights/1"


def weights_bytes(cfg: Config, state_dict: dict[str, Any]) -> bytes:
    """Serialise weights with their config (``torch.save`` of plain data and tensors)."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "config": cfg.model_dump(mode="json"), "state_dict": state_dict}, buf)
    return buf.getvalue()


def _read(path: Union[str, Path]) -> tuple[Config, dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"weights file not found: {p}")
    blob = load_data(p, "weights file", WeightsError)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise WeightsError(f"{p} is not a hybridopt weights file")
    try:
        cfg = parse_config(blob["config"])
    except ConfigError as e:
        raise WeightsError(f"{p}: stored config is invalid: {e}") from None
    return cfg, blob["state_dict"]


def _mismatch(path: Union[str, Path], e: Exception) -> WeightsError:
    return WeightsError(f"{path}: weights do not match the stored config: {str(e).splitlines()[0]}")


def load_weights(path: Union[str, Path]) -> tuple[Config, Task, PlasticSNN]:
    """Rebuild ``(config, task, trained network)`` from a weights file of a gradient-trained task."""
    return _load_network(path, *_read(path))


def _load_network(path: Union[str, Path], cfg: Config, state_dict: dict[str, Any]) -> tuple[Config, Task, PlasticSNN]:
    from hybridopt.train.gradient import build

    task, net = build(cfg)
    try:
        net.load_state_dict(state_dict)
    except RuntimeError as e:
        raise _mismatch(path, e) from None
    return cfg, task, net


def evaluate_weights(path: Union[str, Path]) -> dict[str, float]:
    """Evaluate a weights file the way training evaluated it (held-out episodes; for
    locomotion, the standard and every novel condition)."""
    cfg, state_dict = _read(path)
    if cfg.task.name == "locomotion":
        from hybridopt.train.es import evaluate_policy, load_policy

        try:
            task, net, normalizer = load_policy(cfg, state_dict)
        except (RuntimeError, KeyError) as e:
            raise _mismatch(path, e) from None
        return evaluate_policy(task, net, normalizer, cfg.seed)
    from hybridopt.train.gradient import evaluate

    cfg, task, net = _load_network(path, cfg, state_dict)
    return evaluate(net, task, cfg)
