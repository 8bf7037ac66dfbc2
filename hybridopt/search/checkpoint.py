"""Generation checkpoints: written atomically after each generation, read by ``--resume``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

from hybridopt.errors import CheckpointError
from hybridopt.safeload import load_data

__all__ = ["CheckpointError", "comparable_config", "load_checkpoint", "save_checkpoint"]

FORMAT = "hybridopt.search-checkpoint/1"


def comparable_config(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a config that must match to resume: all but the number of generations and
    the final training (a search may be extended) and where and how widely it is tracked or run."""
    out = {k: v for k, v in config.items() if k not in ("tracking", "ray")}
    search = dict(out.get("search") or {})
    search.pop("generations", None)
    search.pop("final_budget", None)
    search.pop("max_concurrent", None)
    out["search"] = search
    return out


def save_checkpoint(path: Union[str, Path], state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename)."""
    p = Path(path)
    import torch

    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save({"format": FORMAT, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def load_checkpoint(path: Union[str, Path], config: dict[str, Any]) -> dict[str, Any]:
    """Read a checkpoint and check it belongs to this search's config."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"no checkpoint to resume from at {p}")
    state = load_data(p, "search checkpoint", CheckpointError)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not a hybridopt search checkpoint")
    diff = _diff(comparable_config(state["config"]), comparable_config(config))
    if diff:
        raise CheckpointError(f"checkpoint {p} was written for another config (differs at: {', '.join(diff[:5])})")
    return state
