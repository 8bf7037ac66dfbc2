"""Pattern memory (after Miconi et al., 2018): store patterns within an episode, complete one.

Every episode draws ``n_patterns`` random binary patterns of ``pattern_bits`` bits.  Each
bit has two input channels (one fires for 1, the other for 0), so an *erased* bit is a
silent pair, distinct from a 0.  The patterns are shown in turn, ``repeats`` times, each
for ``show_steps`` steps followed by ``gap_steps`` of silence; then one of them is shown
with half its bits erased for ``recall_steps`` steps, and the readout (one unit per bit,
averaged over the recall window) must reconstruct the full pattern.

Loss: binary cross-entropy over all bits.  Fitness: accuracy on the *erased* bits (the
shown ones could be copied through): chance is 50 %.

The task declares a reference observer (:meth:`PatternMemory.observe`): the best completion
from the shown patterns, read off the input spikes alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hybridopt.tasks.base import Batch, poisson_spikes

__all__ = ["PatternMemory"]


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

    def observe(self, batch: Batch, generator: torch.Generator) -> Tensor:
        """The reference observer's completion as a readout (``B x T x bits``, ``±1`` per bit).

        With ``d_i = (on_i - off_i)`` the spike count of bit ``i``'s "1" channel minus its "0"
        channel (on and off fire alike for a silent pair, so noise adds nothing in expectation):

        1. each shown pattern ``p`` is read as ``b_pi = 1[d_pi > 0]``, ``d_pi`` summed over its
           ``repeats`` showings (a tie, the coin);
        2. the probe, ``d_i`` over the recall window, picks the pattern that agrees with it most,
           ``argmax_p sum_i d_i (2 b_pi - 1)`` (erased bits add only noise; a tie, the first);
        3. the answer is that pattern's bits, shown and erased alike.

        Clean, it fails only where two patterns agree on every shown bit of the probe."""
        c = self.cfg
        B, P, nb = batch.x.shape[0], c.n_patterns, c.pattern_bits
        x = batch.x
        d = x[..., :nb] - x[..., nb:]  # B x T x bits
        shown = d[:, : c.repeats * P * self.slot].reshape(B, c.repeats, P, self.slot, nb)
        evidence = shown[:, :, :, : c.show_steps].sum(dim=(1, 3))  # B x P x bits
        coin = torch.rand(evidence.shape, generator=generator) < 0.5
        bits = torch.where(evidence == 0, coin, evidence > 0).float()
        probe = d[:, -c.recall_steps :].sum(1)  # B x bits
        score = (probe.unsqueeze(1) * (2 * bits - 1)).sum(-1)  # B x P
        best = bits[torch.arange(B), score.argmax(1)]
        return (2 * best - 1).unsqueeze(1).expand(B, self.steps, nb).contiguous()
