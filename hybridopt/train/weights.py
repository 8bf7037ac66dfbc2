"""Trained weights on disk: the state dict together with the config that rebuilds the network."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Union

import torch

from hybridopt.config import Config, ConfigError, parse_config
from hybridopt.snn.network import PlasticSNN
from hybridopt.tasks import Task

__all__ = ["WeightsError", "load_weights", "weights_bytes"]

FORMAT = "hybridopt.weights/1"


class WeightsError(ValueError):
    """A weights file that cannot be used; one line naming the problem."""


def weights_bytes(cfg: Config, state_dict: dict[str, Any]) -> bytes:
    """Serialise weights with their config (``torch.save`` of plain data and tensors)."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "config": cfg.model_dump(mode="json"), "state_dict": state_dict}, buf)
    return buf.getvalue()


def load_weights(path: Union[str, Path]) -> tuple[Config, Task, PlasticSNN]:
    """Rebuild ``(config, task, trained network)`` from a weights file."""
    from hybridopt.train.gradient import build

    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"weights file not found: {p}")
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a damaged file
        raise WeightsError(f"corrupted weights file {p}: {type(e).__name__}") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise WeightsError(f"{p} is not a hybridopt weights file")
    try:
        cfg = parse_config(blob["config"])
    except ConfigError as e:
        raise WeightsError(f"{p}: stored config is invalid: {e}") from None
    task, net = build(cfg)
    try:
        net.load_state_dict(blob["state_dict"])
    except RuntimeError as e:
        raise WeightsError(f"{p}: weights do not match the stored config: {str(e).splitlines()[0]}") from None
    return cfg, task, net
