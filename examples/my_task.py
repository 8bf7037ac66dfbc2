"""A task of one's own: delayed match-to-sample with distractors, in spikes.

Nothing in the ``hybridopt`` package names it: this module registers it, and
``HYBRIDOPT_PLUGINS=my_task`` (with this folder importable) makes the command line, the search's
driver and every Ray worker import it before they read a config::

    PYTHONPATH=examples HYBRIDOPT_PLUGINS=my_task hybridopt train examples/my_task.yaml

An episode shows a sample stimulus (one of ``n_stimuli``, each a group of ``channels`` input
channels firing at ``rate_on``), then ``distractors`` other stimuli, each after a gap, then a
test stimulus while a "go" channel fires.  The test is the sample half the time; the readout's
one unit, averaged over the test window, answers "match?".  The most recent stimulus before the
test is always a distractor, so the sample has to be held through them.  Chance is 50 %.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from hybridopt.tasks import TaskSection, register_task
from hybridopt.tasks.base import Batch, poisson_spikes
from hybridopt.tasks.registry import Fraction

__all__ = ["DelayedMatch", "DelayedMatchConfig"]


class DelayedMatchConfig(TaskSection):
    """The ``task:`` section of ``name: delayed_match``."""

    kind: ClassVar[str] = "gradient"  # trained by BPTT under ``train``
    n_stimuli: Annotated[int, Field(ge=2)] = 4
    channels: Annotated[int, Field(ge=1)] = 4
    sample_steps: Annotated[int, Field(ge=1)] = 5
    distractors: Annotated[int, Field(ge=0)] = 2
    distractor_steps: Annotated[int, Field(ge=1)] = 3
    gap_steps: Annotated[int, Field(ge=0)] = 2
    test_steps: Annotated[int, Field(ge=1)] = 5
    rate_on: Fraction = 0.5
    noise: Fraction = 0.0


@register_task("delayed_match", DelayedMatchConfig)
class DelayedMatch:
    """Delayed match-to-sample with distractors (see the module docstring)."""

    name = "delayed_match"
    chance = 0.5
    n_out = 1

    def __init__(self, cfg: DelayedMatchConfig) -> None:
        self.cfg = cfg
        self.n_in = cfg.n_stimuli * cfg.channels + 1  # the stimuli's channel groups, then "go"
        self.steps = (
            cfg.sample_steps + cfg.distractors * (cfg.gap_steps + cfg.distractor_steps) + cfg.gap_steps + cfg.test_steps
        )

    def _show(self, rate: Tensor, stimulus: Tensor, t0: int, steps: int) -> None:
        """Stimulus ``b`` of each sample ``b`` on its channel group, steps ``t0 .. t0 + steps``."""
        c = self.cfg
        for b, k in enumerate(stimulus.tolist()):
            rate[b, t0 : t0 + steps, k * c.channels : (k + 1) * c.channels] = c.rate_on

    def batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        c, B = self.cfg, batch_size
        sample = torch.randint(0, c.n_stimuli, (B,), generator=generator)
        match = torch.rand(B, generator=generator) < 0.5
        other = (sample + 1 + torch.randint(0, c.n_stimuli - 1, (B,), generator=generator)) % c.n_stimuli
        test = torch.where(match, sample, other)
        rate = torch.zeros(B, self.steps, self.n_in)
        self._show(rate, sample, 0, c.sample_steps)
        t = c.sample_steps
        for _ in range(c.distractors):  # never the sample itself
            distractor = (sample + 1 + torch.randint(0, c.n_stimuli - 1, (B,), generator=generator)) % c.n_stimuli
            self._show(rate, distractor, t + c.gap_steps, c.distractor_steps)
            t += c.gap_steps + c.distractor_steps
        self._show(rate, test, self.steps - c.test_steps, c.test_steps)
        rate[:, -c.test_steps :, -1] = 1.0  # go
        return Batch(x=poisson_spikes(rate, c.noise, generator), target=match.float())

    def logits(self, y: Tensor) -> Tensor:
        """The answer of each episode: the readout's mean over the test window."""
        return y[:, -self.cfg.test_steps :, 0].mean(1)

    def loss(self, y: Tensor, batch: Batch) -> Tensor:
        return F.binary_cross_entropy_with_logits(self.logits(y), batch.target)

    def fitness(self, y: Tensor, batch: Batch) -> Tensor:
        return ((self.logits(y) > 0).float() == batch.target).float()
