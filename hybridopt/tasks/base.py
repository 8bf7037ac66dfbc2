"""The task protocol and registry.

A task draws batches from a ``torch.Generator`` (same seed, same batch), turns the
network's readout into a loss and a fitness, and knows its chance level.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor

__all__ = ["EVAL_SEED_OFFSET", "TASKS", "Batch", "Task", "make_task", "poisson_spikes", "register_task"]

# Evaluation draws from seeds at and above this one (a task's held-out batches from a generator
# seeded ``EVAL_SEED_OFFSET + seed``, a control task's episodes from seeds above it); training
# stays below it.
EVAL_SEED_OFFSET = 1_000_003


class Batch(NamedTuple):
    """Input spikes ``B x T x N_in`` and the task's targets (shape is the task's business)."""

    x: Tensor
    target: Tensor


class Task(Protocol):
    name: str
    n_in: int
    n_out: int
    chance: float

    def batch(self, batch_size: int, generator: torch.Generator) -> Batch: ...

    def loss(self, y: Tensor, batch: Batch) -> Tensor: ...

    def fitness(self, y: Tensor, batch: Batch) -> Tensor:
        """Per-sample fitness (``B``); higher is better."""
        ...


TASKS: dict[str, Callable[[Any], Task]] = {}


def register_task(name: str) -> Callable:
    """Class decorator: ``@register_task("cue_association")``.  Its config section declares the
    kind of inner loop that trains it (``kind``, a key of :data:`hybridopt.train.loops.LOOPS`)."""

    def deco(cls):
        TASKS[name] = cls
        return cls

    return deco


def make_task(cfg: Any) -> Task:
    """Build the task a config section describes (``cfg.name`` picks it)."""
    try:
        return TASKS[cfg.name](cfg)
    except KeyError:
        raise ValueError(f"unknown task {cfg.name!r}; known: {sorted(TASKS)}") from None


def poisson_spikes(rate: Tensor, noise: float | Tensor, generator: torch.Generator) -> Tensor:
    """Bernoulli spikes per step with probability ``rate``, plus independent noise spikes
    with probability ``noise`` on every channel: ``s = 1[u1 < rate] OR 1[u2 < noise]``.

    ``noise`` is one probability, or one per channel (a tensor broadcast over the last axis).
    Either way the same uniforms ``u1``, ``u2`` are drawn, so a channel's spikes do not depend
    on the noise of the others."""
    s = torch.rand(rate.shape, generator=generator) < rate
    if bool(torch.as_tensor(noise).gt(0).any()):
        s = s | (torch.rand(rate.shape, generator=generator) < noise)
    return s.float()
