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
from hybridopt.train.loops import Loaded, inner_loop

__all__ = ["WeightsError", "evaluate_weights", "load_trained", "load_weights", "weights_bytes"]

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


def _load(path: Union[str, Path], cfg: Config, state_dict: dict[str, Any]) -> Loaded:
    try:
        return inner_loop(cfg).load(cfg, state_dict)
    except (RuntimeError, KeyError) as e:
        raise _mismatch(path, e) from None


def load_weights(path: Union[str, Path]) -> tuple[Config, Any, PlasticSNN]:
    """Rebuild ``(config, task, trained network)`` from a weights file (a policy's observation
    statistics are left out: :func:`evaluate_weights` uses them)."""
    cfg, state_dict = _read(path)
    loaded = _load(path, cfg, state_dict)
    return cfg, loaded.task, loaded.net


def load_trained(path: Union[str, Path]) -> tuple[Config, Loaded]:
    """Rebuild ``(config, Loaded(task, network, normaliser))`` from a weights file: all a trained
    network needs to play again (a policy's observation statistics included)."""
    cfg, state_dict = _read(path)
    return cfg, _load(path, cfg, state_dict)


def evaluate_weights(path: Union[str, Path]) -> dict[str, float]:
    """Evaluate a weights file the way training evaluated it (held-out episodes; for a control
    task, the standard and every novel condition)."""
    cfg, loaded = load_trained(path)
    return inner_loop(cfg).evaluate(cfg, loaded)
