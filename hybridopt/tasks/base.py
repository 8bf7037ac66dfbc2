"""The task protocols (the registry is :mod:`hybridopt.tasks.registry`; its names are re-exported here).

A task draws batches from a ``torch.Generator`` (same seed, same batch), turns the
network's readout into a loss and a fitness, and knows its chance level.  A control task
(:class:`ControlTask`) is played instead, episode by episode in a simulator that gives no
gradient, with observations normalised by running statistics (:class:`ObsNormalizer`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from hybridopt.tasks.registry import TASKS, make_task, register_task

__all__ = [
    "EVAL_SEED_OFFSET",
    "TASKS",
    "TEST_SEED_OFFSET",
    "Batch",
    "ControlTask",
    "ObsNormalizer",
    "ObsStats",
    "Observer",
    "PopulationControlTask",
    "Rollout",
    "Task",
    "eval_seeds",
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
# Test episodes (a finished network measured once, on episodes no evaluation or selection saw)
# come from generators seeded ``TEST_SEED_OFFSET + seed``, far above both.
TEST_SEED_OFFSET = 10**12


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


# --------------------------------------------------------------------------- control tasks
def eval_seeds(n: int, seed: int = 0) -> list[int]:
    """The ``n`` episode seeds of an evaluation (the same for every candidate of a search)."""
    return [EVAL_SEED_OFFSET + 1000 * seed + i for i in range(n)]


# --------------------------------------------------------------------------- observation normaliser
@dataclass
class ObsStats:
    """Sums of observations (float64) gathered while playing; merged into the normaliser later."""

    count: float
    total: np.ndarray
    total_sq: np.ndarray

    @classmethod
    def empty(cls, n: int) -> ObsStats:
        return cls(0.0, np.zeros(n), np.zeros(n))

    def add(self, obs: np.ndarray) -> None:
        """Add a ``B x n`` batch of observations."""
        self.count += obs.shape[0]
        self.total += obs.sum(0)
        self.total_sq += np.square(obs).sum(0)


@dataclass(frozen=True)
class ObsNormalizer:
    """Running mean and variance of observations (Chan et al.'s parallel merge); immutable:
    :meth:`merged` returns an updated copy, so a policy under evaluation sees frozen statistics."""

    mean: np.ndarray
    var: np.ndarray
    count: float = 0.0

    @classmethod
    def identity(cls, n: int) -> ObsNormalizer:
        return cls(np.zeros(n), np.ones(n), 0.0)

    def merged(self, stats: ObsStats) -> ObsNormalizer:
        if stats.count == 0:
            return self
        n_b = stats.count
        mean_b = stats.total / n_b
        m2_b = np.maximum(stats.total_sq - n_b * np.square(mean_b), 0.0)
        if self.count == 0:
            return ObsNormalizer(mean_b, m2_b / n_b, n_b)
        n_a, n = self.count, self.count + n_b
        delta = mean_b - self.mean
        m2 = self.var * n_a + m2_b + np.square(delta) * n_a * n_b / n
        return ObsNormalizer(self.mean + delta * n_b / n, m2 / n, n)

    def normalize(self, obs: np.ndarray, clip: float) -> np.ndarray:
        return np.clip((obs - self.mean) / np.sqrt(self.var + 1e-8), -clip, clip)

    def tensors(self) -> dict[str, torch.Tensor]:
        """For a weights file: ``obs_norm.mean``, ``obs_norm.var``, ``obs_norm.count``."""
        return {
            "obs_norm.mean": torch.from_numpy(self.mean.copy()),
            "obs_norm.var": torch.from_numpy(self.var.copy()),
            "obs_norm.count": torch.tensor(float(self.count), dtype=torch.float64),
        }

    @classmethod
    def from_tensors(cls, d: dict[str, torch.Tensor]) -> ObsNormalizer:
        return cls(d["obs_norm.mean"].numpy().copy(), d["obs_norm.var"].numpy().copy(), float(d["obs_norm.count"]))


class Rollout(NamedTuple):
    """Returns (``B``), environment steps played, and the fraction of plastic entries of ``H``
    at their clip at the end (``nan`` for a static network)."""

    returns: np.ndarray
    steps: int
    h_saturation: float


@runtime_checkable
class ControlTask(Protocol):
    """A task played in a simulator: ``n_in`` observations in, ``n_out`` actions out.  ``cfg``
    is its config section: ``conditions`` (the novel ones an evaluation adds to ``"standard"``),
    ``eval_seeds`` (episodes per condition in an evaluation) and ``readout_scale``."""

    name: str
    n_in: int
    n_out: int
    cfg: Any

    def rollout(
        self,
        net: Any,
        params: Any,
        seeds: Sequence[int],
        normalizer: ObsNormalizer,
        *,
        condition: str = "standard",
        stats: Optional[ObsStats] = None,
    ) -> Rollout:
        """Play ``len(seeds)`` episodes side by side under ``condition`` with the network's
        parameters ``params``; with ``stats``, the observations seen are added to it."""
        ...


@runtime_checkable
class PopulationControlTask(ControlTask, Protocol):
    """A control task that also plays many parameter sets of one network at once: ES plays a
    whole generation's samples side by side through it, and each sample one by one through
    :meth:`ControlTask.rollout` where a task does not have it."""

    def rollout_members(
        self,
        net: Any,
        members: Sequence[Any],
        seeds: Sequence[int],
        normalizer: ObsNormalizer,
        *,
        conditions: Sequence[str],
        stats: Optional[Sequence[ObsStats]] = None,
    ) -> np.ndarray:
        """Returns (``P x C x E``): each of the ``P`` parameter sets ``members`` played on the
        ``E`` ``seeds`` in each of the ``C`` ``conditions``, member ``k``'s returns equal to
        ``rollout(net, members[k], seeds, ..., condition=c)``'s up to float rounding; with
        ``stats`` (one per member) the observations member ``k`` saw are added to ``stats[k]``."""
        ...
