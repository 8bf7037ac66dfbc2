"""The task protocol and registry.

A task draws batches from a ``torch.Generator`` (same seed, same batch), turns the
network's readout into a loss and a fitness, and knows its chance level.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor

__all__ = [
    "EVAL_SEED_OFFSET",
    "TASKS",
    "Batch",
    "Observer",
    "Task",
    "has_observer",
    "make_task",
    "observer_accuracy",
    "poisson_spikes",
    "register_task",
]

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


class Observer(Protocol):
    """A task that declares a reference observer: a policy computed from the inputs alone, with
    no training.  ``observe`` answers a batch as a readout ``y`` (``B x T x n_out``) that the
    task's own :meth:`Task.fitness` scores like a network's; ``generator`` breaks its ties."""

    def observe(self, batch: Batch, generator: torch.Generator) -> Tensor: ...


def has_observer(task: Any) -> bool:
    """Whether the task declares a reference observer (an ``observe`` method)."""
    return callable(getattr(task, "observe", None))


def observer_accuracy(task: Any, n_episodes: int, seed: int, batch_size: int = 256) -> tuple[float, float]:
    """The observer's mean fitness over ``n_episodes`` episodes of the task's own generator seeded
    ``seed``, and its standard error ``sd / sqrt(n)`` over episodes.  Same seed, same figure."""
    if not has_observer(task):
        raise ValueError(f"task {task.name!r} declares no reference observer")
    if n_episodes < 1:
        raise ValueError(f"observer_accuracy needs at least one episode (got {n_episodes})")
    gen = torch.Generator().manual_seed(seed)
    ties = torch.Generator().manual_seed(seed + 1)
    fit = []
    for start in range(0, n_episodes, batch_size):
        batch = task.batch(min(batch_size, n_episodes - start), gen)
        fit.append(task.fitness(task.observe(batch, ties), batch))
    f = torch.cat(fit).double()
    se = f.std().item() / math.sqrt(len(f)) if len(f) > 1 else math.nan
    return f.mean().item(), se


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
