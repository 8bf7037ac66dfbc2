"""Cue association: a meta-learning task in spikes (after Backpropamine's cue-reward task).

Every episode draws ``n_cues`` fresh random binary cues of ``cue_bits`` bits and makes
cue 0 the target (the cues are random, so its index carries no information).  Each of the
``trials`` trials has three windows::

    cue (cue_steps) | response (response_steps) | feedback (feedback_steps)

A pair of distinct cues is shown as Poisson spike trains (bit 1 -> ``rate_on``, bit 0 ->
``rate_off``) on two banks of ``cue_bits`` channels; with ``hold_cue`` the pair stays on
through the response and feedback windows (so pre-synaptic traces are still up when the
answer arrives).  A response-marker channel fires during the response window, and the
correct answer ("target in the pair" / "not") arrives on two feedback channels during the
feedback window.  The target is in the pair half the time: chance is 50 %.

Readout: one unit; the trial's logit is its mean over the response window.  The loss is the
binary cross-entropy over all trials; the fitness is the accuracy over the second half of
the trials (after the network has had time to learn which cue is the target).
``noise`` adds Poisson spikes with that probability per step on the input channels of the
groups ``noise_on`` names (default all): ``cue`` (both banks), ``marker`` (the response
marker), ``feedback`` (both feedback channels).  Nothing about the cues can be stored in fixed
weights: they are new every episode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hybridopt.tasks.base import Batch, poisson_spikes, register_task

__all__ = ["CueAssociation"]


@register_task("cue_association")
class CueAssociation:
    name = "cue_association"
    chance = 0.5
    n_out = 1

    def __init__(self, cfg) -> None:
        if cfg.n_cues < 3:
            raise ValueError("cue_association needs n_cues >= 3 (pairs without the target need two non-targets)")
        self.cfg = cfg
        self.n_in = 2 * cfg.cue_bits + 3
        self.trial_steps = cfg.cue_steps + cfg.response_steps + cfg.feedback_steps
        self.steps = cfg.trials * self.trial_steps

    def channels(self, group: str) -> slice:
        """The input channels of a group: ``cue`` (both banks), ``marker``, ``feedback`` (yes, no)."""
        nb = self.cfg.cue_bits
        return {
            "cue": slice(0, 2 * nb),
            "marker": slice(2 * nb, 2 * nb + 1),
            "feedback": slice(2 * nb + 1, 2 * nb + 3),
        }[group]

    def noise_mask(self) -> Tensor:
        """1 on the channels of the groups ``noise_on`` names, 0 elsewhere (``n_in``)."""
        mask = torch.zeros(self.n_in)
        for group in self.cfg.noise_on:
            mask[self.channels(group)] = 1.0
        return mask

    def batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        c = self.cfg
        B, K, nb, nt = batch_size, c.n_cues, c.cue_bits, c.trials
        cues = (torch.rand(B, K, nb, generator=generator) < 0.5).float()
        present = torch.rand(B, nt, generator=generator) < 0.5
        # Two distinct non-targets from 1..K-1: a random one, and a random other one.
        first = 1 + torch.randint(0, K - 1, (B, nt), generator=generator)
        shift = 1 + torch.randint(0, K - 2, (B, nt), generator=generator)
        second = 1 + (first - 1 + shift) % (K - 1)
        a = torch.where(present, torch.zeros_like(first), first)
        b = torch.where(present, first, second)
        swap = torch.rand(B, nt, generator=generator) < 0.5
        a, b = torch.where(swap, b, a), torch.where(swap, a, b)
        bi = torch.arange(B).unsqueeze(1)
        pair = torch.cat([cues[bi, a], cues[bi, b]], dim=2)  # B x trials x 2*bits

        cue_rate = c.rate_off + (c.rate_on - c.rate_off) * pair
        rate = torch.zeros(B, nt, self.trial_steps, self.n_in)
        cue_end = self.trial_steps if c.hold_cue else c.cue_steps
        rate[:, :, :cue_end, : 2 * nb] = cue_rate.unsqueeze(2)
        r0, r1 = c.cue_steps, c.cue_steps + c.response_steps
        rate[:, :, r0:r1, 2 * nb] = c.feedback_rate
        rate[:, :, r1:, 2 * nb + 1] = c.feedback_rate * present.float().unsqueeze(2)
        rate[:, :, r1:, 2 * nb + 2] = c.feedback_rate * (~present).float().unsqueeze(2)
        x = poisson_spikes(rate.reshape(B, self.steps, self.n_in), c.noise * self.noise_mask(), generator)
        return Batch(x=x, target=present.float())

    def logits(self, y: Tensor) -> Tensor:
        """Per-trial logit: the readout's mean over each response window (``B x trials``)."""
        c = self.cfg
        y = y[..., 0].reshape(y.shape[0], c.trials, self.trial_steps)
        return y[:, :, c.cue_steps : c.cue_steps + c.response_steps].mean(-1)

    def loss(self, y: Tensor, batch: Batch) -> Tensor:
        return F.binary_cross_entropy_with_logits(self.logits(y), batch.target)

    def fitness(self, y: Tensor, batch: Batch) -> Tensor:
        correct = ((self.logits(y) > 0).float() == batch.target).float()
        return correct[:, self.cfg.trials // 2 :].mean(1)
