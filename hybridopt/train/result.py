"""What one candidate's training returns: fitness, curves, weights, cost, and how it ended."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = ["ProgressFn", "TrainResult"]

# ``progress(step, metrics)``: called by inner loops as they go (tracking stays outside).
ProgressFn = Callable[[int, dict[str, float]], None]


@dataclass
class TrainResult:
    """Outcome of one inner-loop training.

    ``history`` is a list of ``(step, {metric: value})``; ``state_dict`` holds CPU tensors
    of the final weights (empty for a failed candidate); ``status`` is ``"FINISHED"`` or
    ``"FAILED"`` (then ``reason`` says why and ``fitness`` is ``-inf``).
    """

    fitness: float
    final_metrics: dict[str, float] = field(default_factory=dict)
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    state_dict: dict[str, Any] = field(default_factory=dict)
    wall_time: float = 0.0
    cpu_time: float = 0.0
    steps: int = 0
    episodes: int = 0
    status: str = "FINISHED"
    reason: Optional[str] = None

    @property
    def failed(self) -> bool:
        return self.status != "FINISHED"

    @classmethod
    def failure(cls, reason: str, **kw: Any) -> TrainResult:
        return cls(fitness=-math.inf, status="FAILED", reason=reason, **kw)
