"""Pattern memory (after Miconi et al., 2018): store patterns within an episode, complete one.

Every episode draws ``n_patterns`` random binary patterns of ``pattern_bits`` bits.  Each
bit has two input channels (one fires for 1, the other for 0), so an *erased* bit is a
silent pair, distinct from a 0.  The patterns are shown in turn, ``repeats`` times, each
for ``show_steps`` steps followed by ``gap_steps`` of silence; then one of them is shown
with half its bits erased for ``recall_steps`` steps, and the readout (one unit per bit,
averaged over the recall window) must reconstruct the full pattern.

Loss: binary cross-entropy over all bits.  Fitness: accuracy on the *erased* bits (the
shown ones could be copied through): chance is 50 %.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hybridopt.tasks.base import Batch, poisson_spikes, register_task

__all__ = ["PatternMemory"]


@register_task("pattern_memory")
class PatternMemory:
    name = "pattern_memory"
    chance = 0.5

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.n_in = 2 * cfg.pattern_bits
        self.n_out = cfg.pattern_bits
        self.slot = cfg.show_steps + cfg.gap_steps
        self.steps = cfg.repeats * cfg.n_patterns * self.slot + cfg.recall_steps

    def batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        c = self.cfg
        B, P, nb = batch_size, c.n_patterns, c.pattern_bits
        patterns = (torch.rand(B, P, nb, generator=generator) < 0.5).float()
        which = torch.randint(0, P, (B,), generator=generator)
        probe = patterns[torch.arange(B), which]
        # Erase exactly half the bits, chosen at random per sample.
        order = torch.rand(B, nb, generator=generator).argsort(dim=1)
        erased = torch.zeros(B, nb, dtype=torch.bool).scatter_(1, order[:, : nb // 2], True)

        def channels(bits: Tensor, visible: Tensor) -> Tensor:
            on = c.rate_off + (c.rate_on - c.rate_off) * bits
            off = c.rate_off + (c.rate_on - c.rate_off) * (1 - bits)
            return torch.cat([on * visible, off * visible], dim=-1)

        rate = torch.zeros(B, self.steps, self.n_in)
        for r in range(c.repeats):
            for p in range(P):
                t0 = (r * P + p) * self.slot
                rate[:, t0 : t0 + c.show_steps] = channels(patterns[:, p], torch.ones(B, nb)).unsqueeze(1)
        rate[:, -c.recall_steps :] = channels(probe, (~erased).float()).unsqueeze(1)
        x = poisson_spikes(rate, c.noise, generator)
        return Batch(x=x, target=torch.stack([probe, erased.float()], dim=1))

    def logits(self, y: Tensor) -> Tensor:
        return y[:, -self.cfg.recall_steps :].mean(1)

    def loss(self, y: Tensor, batch: Batch) -> Tensor:
        return F.binary_cross_entropy_with_logits(self.logits(y), batch.target[:, 0])

    def fitness(self, y: Tensor, batch: Batch) -> Tensor:
        bits, erased = batch.target[:, 0], batch.target[:, 1]
        correct = ((self.logits(y) > 0).float() == bits).float()
        return (correct * erased).sum(1) / erased.sum(1)
