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

The task declares a reference observer (:meth:`CueAssociation.observe`): it reads only the
input spikes and learns nothing across episodes; its accuracy is what the inputs allow.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hybridopt.tasks.base import Batch, poisson_spikes

__all__ = ["BitReader", "CueAssociation", "CueGrouper", "observe_episode"]


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

    @property
    def reading_steps(self) -> int:
        """``W``: the steps of a trial its pair is shown before the feedback (cue and response
        windows with ``hold_cue``, else the cue window)."""
        c = self.cfg
        return c.cue_steps + c.response_steps if c.hold_cue else c.cue_steps

    def bit_reader(self) -> BitReader:
        """How a cue bit is read from a channel's spike fraction over :attr:`reading_steps`:
        ``p_on = 1 - (1 - rate_on)(1 - q)``, ``p_off = 1 - (1 - rate_off)(1 - q)``, ``q`` the noise
        on the cue channels."""
        c = self.cfg
        q = c.noise if "cue" in c.noise_on else 0.0
        return BitReader.of(1 - (1 - c.rate_on) * (1 - q), 1 - (1 - c.rate_off) * (1 - q), self.reading_steps)

    def observe(self, batch: Batch, generator: torch.Generator) -> Tensor:
        """The reference observer's answers as a readout (``B x T x 1``: ``+1`` through a trial it
        answers "target in the pair", ``-1`` otherwise), scored by :meth:`fitness` like a network's.

        It reads each bank's spike counts over the steps its cue is shown before the feedback
        (``W`` steps: cue and response windows with ``hold_cue``, else the cue window), and the
        feedback as the sign of (yes - no) spikes over the feedback window; it knows the task's
        spike probabilities per step, ``p_on = 1 - (1 - rate_on)(1 - q)`` and ``p_off = 1 - (1 -
        rate_off)(1 - q)`` (``q``: the noise on the cue channels).  Each episode is then answered
        by :func:`observe_episode`; ``generator`` breaks its ties."""
        c = self.cfg
        B, nb = batch.x.shape[0], c.cue_bits
        x = batch.x.reshape(B, c.trials, self.trial_steps, self.n_in).numpy()
        W = self.reading_steps
        counts = x[:, :, :W, : 2 * nb].sum(2).reshape(B, c.trials, 2, nb)
        fb = x[:, :, c.cue_steps + c.response_steps :, 2 * nb + 1 : 2 * nb + 3].sum(2)
        feedback = np.sign(fb[..., 0] - fb[..., 1])  # +1 present, -1 absent, 0 unreadable
        reader = self.bit_reader()
        coins = torch.rand(B, c.trials, generator=generator).numpy() < 0.5
        answers = np.stack([observe_episode(counts[b] / W, feedback[b], c.n_cues, coins[b], reader) for b in range(B)])
        y = torch.from_numpy(np.where(answers, 1.0, -1.0)).float()
        return y.unsqueeze(2).expand(B, c.trials, self.trial_steps).reshape(B, self.steps, 1)


class BitReader(NamedTuple):
    """How the observer reads a cue bit from a channel's spike fraction, and when two readings are
    the same cue.

    A channel fires with probability ``p1`` per step when its bit is on, ``p0`` when off.  Over ``n``
    steps with ``c`` spikes the likelihood ratio says on iff ``c / n > tau``::

        tau = L0 / (L1 + L0),   L1 = log(p1 / p0),   L0 = log((1 - p0) / (1 - p1))

    ``eps`` is the chance that one reading of ``W`` steps gets a bit wrong (the mean of the two
    binomial tails).  A reading ``d`` bits away from a pattern of ``b`` bits is that pattern
    (misread) rather than a new random cue when ``eps^d (1 - eps)^(b - d) >= 2^-b``, i.e. ``d <=
    b log(2 (1 - eps)) / log((1 - eps) / eps)``; :meth:`max_mismatch` is that bound."""

    tau: float
    eps: float

    @classmethod
    def of(cls, p1: float, p0: float, W: int) -> BitReader:
        p1, p0 = min(max(p1, 1e-6), 1 - 1e-6), min(max(p0, 1e-6), 1 - 1e-6)
        if p1 <= p0:
            raise ValueError(f"the observer needs rate_on above rate_off (p_on {p1}, p_off {p0})")
        L1, L0 = math.log(p1 / p0), math.log((1 - p0) / (1 - p1))
        tau = L0 / (L1 + L0)
        cut = math.floor(tau * W)  # on iff c > cut

        def pmf(c: int, p: float) -> float:
            return math.comb(W, c) * p**c * (1 - p) ** (W - c)

        miss = sum(pmf(c, p1) for c in range(cut + 1))
        false = sum(pmf(c, p0) for c in range(cut + 1, W + 1))
        return cls(tau, min(max((miss + false) / 2, 1e-12), 0.49))

    def max_mismatch(self, bits: int) -> int:
        e = self.eps
        return math.floor(bits * math.log(2 * (1 - e)) / math.log((1 - e) / e))


def observe_episode(
    fractions: np.ndarray, feedback: np.ndarray, n_cues: int, coins: np.ndarray, reader: BitReader
) -> np.ndarray:
    """The cue-association observer's answers for one episode (``trials`` booleans).

    ``fractions`` (``trials x 2 x bits``): each bank's spikes per channel per step over the steps
    its cue is shown before the feedback; ``feedback`` (``trials``): ``+1`` target present, ``-1``
    absent, ``0`` unreadable; ``coins``: a fair coin per trial for ties.  Trial by trial, using
    only what came before (and the trial's own cue spikes):

    1. *Read the banks*: bit ``= 1[fraction > tau]`` (:class:`BitReader`).
    2. *Group into at most* ``n_cues`` *cue patterns.*  A pattern is the mean of the fractions
       assigned to it, read the same way.  Each bank goes to the nearest pattern in Hamming
       distance if that is within :meth:`BitReader.max_mismatch` or all ``n_cues`` patterns exist,
       else it starts a new one; the two banks of a trial take different patterns (the bank nearer
       its pattern chooses first).
    3. *Keep the targets consistent with the feedback.*  Each of the ``n_cues`` possible targets
       (the patterns, and the cues not seen yet, which were in no pair) counts the earlier
       trials whose feedback it contradicts (``target in pair != present``); the targets with the
       fewest are the consistent ones (none contradicted, unless something was misread).
    4. *Answer by their majority*: "present" if more of them are in the pair than not, "absent"
       if fewer, the coin if as many.
    """
    trials, _, bits = fractions.shape
    grouper = CueGrouper(n_cues, reader, bits)
    violations: list[int] = []  # per pattern: earlier feedback it contradicts
    unseen_violations = 0  # a cue not seen yet was in no pair: it contradicts every "present"
    answers = np.zeros(trials, dtype=bool)
    for k in range(trials):
        seen = len(grouper)
        assigned = grouper.assign(fractions[k])
        violations += [unseen_violations] * (len(grouper) - seen)  # new patterns, in index order
        pair = set(assigned)
        scores = violations + [unseen_violations] * (n_cues - len(grouper))
        best = min(scores)
        consistent = [h for h, v in enumerate(scores) if v == best]
        yes = sum(1 for h in consistent if h in pair)
        no = len(consistent) - yes
        answers[k] = yes > no if yes != no else bool(coins[k])
        if feedback[k] != 0:
            present = feedback[k] > 0
            for h in range(len(violations)):
                violations[h] += int((h in pair) != present)
            unseen_violations += int(present)
    return answers


class CueGrouper:
    """Steps 1 and 2 of the observer (:func:`observe_episode`): reads each trial's two banks and
    groups the readings of an episode into at most ``n_cues`` cue patterns, trial by trial.

    A pattern is the mean of the fractions assigned to it, read as bits by ``reader``;
    :meth:`assign` gives each bank's pattern index (``len(self)`` before the call or above: a new
    pattern) and adds the readings to their patterns."""

    def __init__(self, n_cues: int, reader: BitReader, bits: int) -> None:
        self.n_cues, self.reader = n_cues, reader
        self.max_mismatch = reader.max_mismatch(bits)
        self.sums: list[tuple[np.ndarray, int]] = []  # per pattern: summed fractions, readings assigned

    def __len__(self) -> int:
        return len(self.sums)

    def assign(self, fractions: np.ndarray) -> list[int]:
        """The pattern index of each bank (``fractions``: ``2 x bits``, spikes per channel per step)."""
        pattern_bits = [s / n > self.reader.tau for s, n in self.sums]
        assigned = _assign(fractions > self.reader.tau, pattern_bits, self.n_cues, self.max_mismatch)
        for idx, bank in sorted(zip(assigned, range(2))):  # new patterns in the order of their index
            if idx == len(self.sums):
                self.sums.append((fractions[bank].astype(float), 1))
            else:
                s, n = self.sums[idx]
                self.sums[idx] = (s + fractions[bank], n + 1)
        return assigned


def _assign(bank_bits: np.ndarray, pattern_bits: list[np.ndarray], n_cues: int, max_mismatch: int) -> list[int]:
    """Pattern index of each of the two banks (``len(pattern_bits)`` for a new pattern): the
    nearest in Hamming distance if within ``max_mismatch`` or no new one may start, else new; the
    bank nearer its pattern chooses first and the other bank takes a different one."""
    dist = [[int((b != p).sum()) for p in pattern_bits] for b in bank_bits]
    order = sorted(range(2), key=lambda bank: min(dist[bank], default=bank_bits.shape[1] + 1))
    out = [0, 0]
    taken: set[int] = set()
    n_new = 0
    for bank in order:
        free = [(d, i) for i, d in enumerate(dist[bank]) if i not in taken]
        can_start = len(pattern_bits) + n_new < n_cues
        if free and (min(free)[0] <= max_mismatch or not can_start):
            out[bank] = min(free)[1]
        else:  # a new pattern (the second bank's new one comes after the first's)
            out[bank] = len(pattern_bits) + n_new
            n_new += 1
        taken.add(out[bank])
    return out
