"""Generation checkpoints: written atomically before generation 0 and after each generation,
read by ``--resume``.

On disk (format ``hybridopt.search-checkpoint/1``, a ``torch.save`` of plain data and tensors):
``config`` (the search's config as JSON data), ``generation`` (the last one complete; ``-1``:
none yet), ``population`` (the GA's unit genomes, one row each), ``evals`` (their fitness, or
``None`` before generation 0 is measured), ``generator`` (the GA's random state),
``parent_run_id``, ``records`` (every candidate recorded so far), ``best`` (``{"record",
"state_dict"}`` of the best finished candidate, or ``None``) and ``best_history`` (the best
fitness after each generation).  A record is kept with the keys it has always had:
``generation, index, unit, values, fitness, status, reason, run_id, wall_time, cpu_s,
budget_cpu_s, rung`` (``fitness`` of one that did not finish: ``FAILED_FITNESS``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from hybridopt.config import parse_config
from hybridopt.errors import CheckpointError, ConfigError
from hybridopt.safeload import load_data
from hybridopt.stored_names import CandidateRecord

if TYPE_CHECKING:  # torch itself is imported when a checkpoint is written: `--help` and bad input stay instant
    import torch

__all__ = ["FAILED_FITNESS", "CheckpointError", "SearchCheckpoint", "comparable_config", "load_checkpoint"]

FORMAT = "hybridopt.search-checkpoint/1"

# Fitness of a candidate that failed, for the GA: below any real fitness, but finite.
FAILED_FITNESS = -1.0e9


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


def _save_atomically(path: Union[str, Path], state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename)."""
    import torch

    p = Path(path)
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
    """Read a checkpoint's data and check it belongs to this search's config."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"no checkpoint to resume from at {p}")
    state = load_data(p, "search checkpoint", CheckpointError)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not a hybridopt search checkpoint")
    if state["config"] == config:
        return state
    # both read through today's schema: a key added since an earlier release (at its default) is
    # no difference, so that release's checkpoints still resume
    try:
        stored = parse_config(state["config"]).model_dump(mode="json")
        current = parse_config(config).model_dump(mode="json")
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {p}: its config is no longer valid ({e})") from None
    diff = _diff(comparable_config(stored), comparable_config(current))
    if diff:
        raise CheckpointError(f"checkpoint {p} was written for another config (differs at: {', '.join(diff[:5])})")
    return state


def encode_record(r: CandidateRecord) -> dict[str, Any]:
    """A candidate as a checkpoint keeps it (the keys of format 1)."""
    return {
        "generation": r.generation,
        "index": r.index,
        "unit": list(r.unit),
        "values": dict(r.genome),
        "fitness": FAILED_FITNESS if r.fitness is None else r.fitness,
        "status": r.status,
        "reason": r.reason,
        "run_id": r.run_id,
        "wall_time": r.wall_s,
        "cpu_s": r.cpu_s,
        "budget_cpu_s": r.budget_cpu_s,
        "rung": r.rung,
    }


def decode_record(d: dict[str, Any]) -> CandidateRecord:
    """A candidate read from a checkpoint."""
    finished = d["status"] == "FINISHED" and d["fitness"] > FAILED_FITNESS
    return CandidateRecord(
        run_id=d["run_id"],
        generation=d["generation"],
        index=d["index"],
        unit=list(d["unit"]),
        genome=dict(d["values"]),
        status=d["status"],
        fitness=float(d["fitness"]) if finished else None,
        reason=d["reason"],
        rung=d.get("rung", 0),
        wall_s=d["wall_time"],
        cpu_s=d.get("cpu_s", 0.0),
        budget_cpu_s=d.get("budget_cpu_s", 0.0),
    )


@dataclass
class SearchCheckpoint:
    """Where a search stands after a generation: what ``--resume`` continues from (see the
    module's docstring for each field)."""

    config: dict[str, Any]
    parent_run_id: str
    generation: int
    population: torch.Tensor
    generator: torch.Tensor
    evals: Optional[torch.Tensor] = None
    records: list[CandidateRecord] = field(default_factory=list)
    best: Optional[tuple[CandidateRecord, dict[str, Any]]] = None  # (record, its weights' state_dict)
    best_history: list[float] = field(default_factory=list)

    def save(self, path: Union[str, Path]) -> None:
        """Write it to ``path`` atomically, in format 1."""
        best = None if self.best is None else {"record": encode_record(self.best[0]), "state_dict": self.best[1]}
        _save_atomically(
            path,
            {
                "config": self.config,
                "generation": self.generation,
                "population": self.population.clone(),
                "evals": self.evals,
                "generator": self.generator,
                "parent_run_id": self.parent_run_id,
                "records": [encode_record(r) for r in self.records],
                "best": best,
                "best_history": list(self.best_history),
            },
        )

    @classmethod
    def load(cls, path: Union[str, Path], config: dict[str, Any]) -> SearchCheckpoint:
        """Read the checkpoint at ``path``, refusing one of another search (``config``: this
        search's, as JSON data)."""
        d = load_checkpoint(path, config)
        best = d["best"]
        return cls(
            config=d["config"],
            parent_run_id=d["parent_run_id"],
            generation=d["generation"],
            population=d["population"],
            generator=d["generator"],
            evals=d["evals"],
            records=[decode_record(r) for r in d["records"]],
            best=None if best is None else (decode_record(best["record"]), best["state_dict"]),
            best_history=list(d["best_history"]),
        )
