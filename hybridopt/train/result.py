"""What one candidate's training returns: fitness, curves, weights, cost, and how it ended."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = ["ProgressEvent", "ProgressFn", "TrainResult", "TrainState"]


@dataclass(frozen=True)
class ProgressEvent:
    """What a loop reports as it goes, inner or outer: ``done`` of ``total`` in its own unit
    (training steps, ES generations, a generation's candidates), the figures so far, the stage it
    is in (``"generation 3/9"``), and a ``line`` to show once (a candidate that stopped)."""

    done: Optional[int] = None
    total: Optional[int] = None
    metrics: dict[str, float] = field(default_factory=dict)
    stage: str = ""
    line: Optional[str] = None


# ``progress(event)``: called by every loop as it goes (tracking stays outside).
ProgressFn = Callable[[ProgressEvent], None]


@dataclass
class TrainState:
    """A trained state an inner loop can continue from (and that it returns).

    ``model``: the network's ``state_dict`` (CPU tensors; for a policy, with its observation
    normaliser).  ``optimizer``: the optimiser's or search distribution's own state, ``None`` to
    start it afresh (a child whose genome differs from the state's).  ``step``: training steps
    (ES: generations) behind the state, so a continued curve goes on at ``step + 1``.
    ``cpu_s``: CPU seconds of training behind it, inherited included.  ``episodes``: training
    episodes behind it.  ``rng``: the training batch generator's state (``None``: seed it from
    the config and the step)."""

    model: dict[str, Any]
    optimizer: Optional[dict[str, Any]] = None
    step: int = 0
    cpu_s: float = 0.0
    episodes: int = 0
    rng: Optional[Any] = None

    def fresh_optimizer(self) -> TrainState:
        """The same weights with the optimiser (or search distribution) to start afresh."""
        return TrainState(self.model, None, self.step, self.cpu_s, self.episodes, None)


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
    state: Optional[TrainState] = None  # to continue from (None for a failed candidate)
    node: Optional[str] = None  # the machine that trained it (a Ray worker's node address)

    @property
    def failed(self) -> bool:
        return self.status != "FINISHED"

    @classmethod
    def failure(cls, reason: str, **kw: Any) -> TrainResult:
        return cls(fitness=-math.inf, status="FAILED", reason=reason, **kw)
