import math

import numpy as np
import pytest
import torch

from hybridopt.config import ConfigError, parse_config
from hybridopt.tasks import Batch, make_task
from hybridopt.tasks.base import has_observer, observer_accuracy
from hybridopt.tasks.cue_association import BitReader, CueGrouper, observe_episode


def make(**kw):
    task = {"name": "cue_association", "n_cues": 4, "cue_bits": 6, "trials": 6, "cue_steps": 3, "response_steps": 2}
    task.update({"feedback_steps": 2, "rate_on": 1.0, "rate_off": 0.0, "feedback_rate": 1.0, **kw})
    return make_task(parse_config({"task": task}).task)


def test_shapes_and_sizes():
    t = make()
    b = t.batch(5, torch.Generator().manual_seed(0))
    assert t.n_in == 2 * 6 + 3 and t.n_out == 1 and t.chance == 0.5
    assert b.x.shape == (5, 6 * 7, t.n_in)
    assert b.target.shape == (5, 6)


def test_same_seed_same_batch_and_different_seed_differs():
    t = make(rate_on=0.5, noise=0.1)
    a = t.batch(4, torch.Generator().manual_seed(3))
    b = t.batch(4, torch.Generator().manual_seed(3))
    c = t.batch(4, torch.Generator().manual_seed(4))
    assert torch.equal(a.x, b.x) and torch.equal(a.target, b.target)
    assert not torch.equal(a.x, c.x)


def test_pairs_feedback_and_response_marker_follow_the_target():
    # rate_on=1, rate_off=0, no noise: spikes are exactly the cue bits, so the task is readable.
    nb, T = 16, 7  # 16 bits: two random cues collide with probability 2^-16
    t = make(cue_bits=nb)
    b = t.batch(64, torch.Generator().manual_seed(1))
    x = b.x.reshape(64, 6, T, t.n_in)
    for i in range(64):
        seen = {}
        for k in range(6):
            left, right = x[i, k, 0, :nb], x[i, k, 0, nb : 2 * nb]
            # hold_cue (default) keeps the pair on through response and feedback windows
            assert torch.equal(x[i, k, :, : 2 * nb], x[i, k, :1, : 2 * nb].expand(T, -1))
            assert x[i, k, 3:5, 2 * nb].eq(1).all() and x[i, k, :3, 2 * nb].eq(0).all()
            yes, no = x[i, k, 5:, 2 * nb + 1], x[i, k, 5:, 2 * nb + 2]
            assert yes.eq(b.target[i, k]).all() and no.eq(1 - b.target[i, k]).all()
            for cue in (left, right):
                seen.setdefault(tuple(cue.tolist()), []).append(b.target[i, k].item())
        # the target is the one cue that appears exactly in the "present" trials
        present_trials = int(b.target[i].sum())
        if 0 < present_trials < 6:
            counts = [v for v in seen.values() if len(v) == present_trials and all(v)]
            assert counts, "no cue co-occurs with every 'present' trial"
    assert 0.35 < b.target.mean().item() < 0.65  # the target is in the pair half the time


def test_cue_off_after_cue_window_without_hold():
    t = make(hold_cue=False)
    x = t.batch(8, torch.Generator().manual_seed(2)).x.reshape(8, 6, 7, t.n_in)
    assert x[:, :, 3:, :12].sum() == 0
    assert x[:, :, :3, :12].sum() > 0


def test_noise_adds_spikes_on_every_channel():
    clean = make(rate_on=0.0).batch(16, torch.Generator().manual_seed(0)).x
    noisy = make(rate_on=0.0, noise=0.3).batch(16, torch.Generator().manual_seed(0)).x
    assert noisy.sum() > clean.sum()
    rate = noisy[..., :12].mean().item()  # cue channels carry only noise here
    assert 0.25 < rate < 0.35


def test_fitness_counts_only_the_second_half_and_logits_use_the_response_window():
    t = make()
    b = t.batch(2, torch.Generator().manual_seed(0))
    y = torch.zeros(2, 6 * 7, 1)
    # Response window of each trial = steps 3,4 of the 7; put the right sign there.
    sign = b.target * 2 - 1
    for k in range(6):
        y[:, k * 7 + 3 : k * 7 + 5, 0] = sign[:, k : k + 1]
    assert torch.equal(t.fitness(y, b), torch.ones(2))
    # Wrong answers in the first half only: fitness unchanged.
    for k in range(3):
        y[:, k * 7 + 3 : k * 7 + 5, 0] = -sign[:, k : k + 1]
    assert torch.equal(t.fitness(y, b), torch.ones(2))
    # One wrong answer in the second half of 3 trials: 2/3.
    y[0, 5 * 7 + 3 : 5 * 7 + 5, 0] = -sign[0, 5]
    assert torch.allclose(t.fitness(y, b), torch.tensor([2 / 3, 1.0]))
    # Outside the response window the readout does not matter.
    y[:, 0:3] = 100.0
    assert torch.allclose(t.fitness(y, b), torch.tensor([2 / 3, 1.0]))


def test_loss_is_ln2_for_a_silent_readout():
    t = make()
    b = t.batch(4, torch.Generator().manual_seed(0))
    assert abs(t.loss(torch.zeros(4, 42, 1), b).item() - 0.6931472) < 1e-6


# --------------------------------------------------------------------------- noise on chosen groups
def test_noise_on_puts_the_noise_only_on_the_groups_named():
    groups = {"cue": slice(0, 12), "marker": slice(12, 13), "feedback": slice(13, 15)}
    full = make(rate_on=0.5, noise=0.3).batch(64, torch.Generator().manual_seed(5)).x
    clean = make(rate_on=0.5, noise=0.0).batch(64, torch.Generator().manual_seed(5)).x
    assert torch.equal(
        make(rate_on=0.5, noise=0.3, noise_on=["marker", "feedback", "cue"])
        .batch(64, torch.Generator().manual_seed(5))
        .x,
        full,
    )  # the default is every group, in any order
    for name, chans in groups.items():
        x = make(rate_on=0.5, noise=0.3, noise_on=[name]).batch(64, torch.Generator().manual_seed(5)).x
        # the same spikes as the fully noisy batch on the group's channels, the clean ones elsewhere
        assert torch.equal(x[..., chans], full[..., chans])
        others = torch.ones(15, dtype=torch.bool)
        others[chans] = False
        assert torch.equal(x[..., others], clean[..., others])
        # measured by spike counts: the extra spikes are on the group, at the noise rate where it is silent
        extra = x - clean
        assert extra[..., others].sum() == 0 and extra[..., chans].sum() > 0
        silent = clean[..., chans] == 0
        rate = x[..., chans][silent].mean().item()
        assert 0.27 < rate < 0.33, (name, rate)
    none = make(rate_on=0.5, noise=0.3, noise_on=[]).batch(64, torch.Generator().manual_seed(5)).x
    assert torch.equal(none, clean)


def test_noise_on_rejects_unknown_and_repeated_groups_in_one_line():
    for bad, word in ((["cue", "reward"], "noise_on"), (["cue", "cue"], "duplicates")):
        with pytest.raises(ConfigError) as err:
            make(noise=0.2, noise_on=bad)
        msg = str(err.value)
        assert "task.noise_on" in msg and word in msg and "\n" not in msg


# --------------------------------------------------------------------------- the reference observer
def _observer(noise: float, **kw) -> tuple[float, float]:
    task = make_task(parse_config({"task": {"name": "cue_association", "noise": noise, **kw}}).task)
    assert has_observer(task)
    return observer_accuracy(task, 400, seed=11)


def test_observer_is_near_perfect_clean_and_degrades_with_noise_without_losing_the_answer():
    figures = [_observer(q) for q in (0.0, 0.1, 0.2, 0.3)]
    assert figures[0][0] >= 0.99
    for (m0, s0), (m1, s1) in zip(figures, figures[1:]):  # non-increasing within two standard errors
        assert m1 <= m0 + 2 * math.hypot(s0, s1)
    # noise costs it something, but the inputs still hold the answer (chance is 0.5)
    assert 0.85 < figures[3][0] < figures[0][0] - 2 * math.hypot(figures[0][1], figures[3][1])


def test_observer_accuracy_needs_an_episode():
    task = make_task(parse_config({"task": {"name": "cue_association"}}).task)
    with pytest.raises(ValueError, match="at least one episode"):
        observer_accuracy(task, 0, seed=0)


def test_observer_is_seeded():
    assert _observer(0.2) == _observer(0.2)
    task = make_task(parse_config({"task": {"name": "cue_association", "noise": 0.2}}).task)
    assert observer_accuracy(task, 200, seed=1) != observer_accuracy(task, 200, seed=2)


def test_observer_reads_the_inputs_not_the_targets():
    task = make_task(parse_config({"task": {"name": "cue_association", "noise": 0.2}}).task)
    b = task.batch(32, torch.Generator().manual_seed(0))
    y = task.observe(b, torch.Generator().manual_seed(1))
    blind = task.observe(Batch(b.x, torch.zeros_like(b.target)), torch.Generator().manual_seed(1))
    assert torch.equal(y, blind)
    assert y.shape == (32, task.steps, 1) and set(y.unique().tolist()) <= {-1.0, 1.0}
    assert task.fitness(y, b).mean() > 0.85  # scored by the task's own fitness


def test_observer_keeps_the_targets_consistent_with_feedback_and_answers_by_their_majority():
    # Four clean 8-bit cues A, B, C, D; the target is B.
    A, B, C, D = (np.array(v, dtype=float) for v in np.eye(4, 8) + np.eye(4, 8, 4))
    pairs = [(A, B), (A, C), (B, D), (C, D), (A, D), (B, C)]
    feedback = np.array([1, -1, 1, -1, -1, 1])
    frac = np.stack([np.stack([p, q]) * 0.5 for p, q in pairs])
    reader = BitReader.of(0.5, 0.0, 10)
    for coin in (False, True):
        ans = observe_episode(frac, feedback, 4, np.full(6, coin), reader)
        # trial 1: {A, B} and two unseen cues are possible: two say present, two absent -> the coin;
        # after "present": A or B.  Trial 2 (A, C): A says present, B absent -> the coin; after
        # "absent": only B is left, and from then on every answer is right.
        assert ans[0] == coin and ans[1] == coin
        assert list(ans[2:]) == [True, False, False, True]


def test_grouper_assigns_each_reading_to_its_cue_pattern_and_keeps_at_most_n_cues():
    A, B, C, D = (np.array(v, dtype=float) for v in np.eye(4, 8) + np.eye(4, 8, 4))
    reader = BitReader.of(0.5, 0.0, 10)  # clean: any bit off is another cue while a new one may start
    grouper = CueGrouper(3, reader, 8)
    assert grouper.assign(np.stack([A, B]) * 0.5) == [0, 1] and len(grouper) == 2
    assert grouper.assign(np.stack([C, A]) * 0.5) == [2, 0] and len(grouper) == 3  # a new one, then A again
    # n_cues patterns exist: D, never seen, joins the nearest one B left free (A and C tie: the lower index)
    assert grouper.assign(np.stack([D, B]) * 0.5) == [0, 1] and len(grouper) == 3
    assert [n for _, n in grouper.sums] == [3, 2, 1]  # readings per pattern: A, A, D; B, B; C
    # the two banks of a trial never share a pattern
    twice = CueGrouper(4, reader, 8)
    twice.assign(np.stack([A, B]) * 0.5)
    assert twice.assign(np.stack([A, A]) * 0.5) == [0, 2]


def test_bit_reader_threshold_and_mismatch_follow_the_likelihoods():
    clean = BitReader.of(0.5, 0.0, 15)  # one spike means "on"; a misread is a 2^-15 event
    assert 0 < clean.tau * 15 < 1 and clean.eps < 1e-4 and clean.max_mismatch(16) <= 1
    noisy = BitReader.of(0.65, 0.3, 15)
    assert 0.4 < noisy.tau < 0.5 and 0.05 < noisy.eps < 0.15
    assert noisy.max_mismatch(16) > clean.max_mismatch(16)
