import math

import torch

from hybridopt.config import parse_config
from hybridopt.tasks import Batch, make_task
from hybridopt.tasks.base import has_observer, observer_accuracy


def make(**kw):
    cfg = {"name": "pattern_memory", "n_patterns": 3, "pattern_bits": 8, "repeats": 2, "show_steps": 2}
    cfg.update({"gap_steps": 1, "recall_steps": 3, "rate_on": 1.0, "rate_off": 0.0, **kw})
    return make_task(parse_config({"task": cfg}).task)


def test_probe_is_a_stored_pattern_with_exactly_half_erased():
    t = make()
    b = t.batch(16, torch.Generator().manual_seed(0))
    assert b.x.shape == (16, 2 * 3 * 3 + 3, 16)
    bits, erased = b.target[:, 0], b.target[:, 1]
    assert erased.sum(1).eq(4).all()
    recall = b.x[:, -1]
    on, off = recall[:, :8], recall[:, 8:]
    assert (on + off).eq(1 - erased).all()  # erased bits are silent on both channels
    assert on[erased == 0].eq(bits[erased == 0]).all()
    for i in range(16):
        shown = [b.x[i, s * 3, :8] for s in range(3)]
        assert any(torch.equal(p, bits[i]) for p in shown)


def test_fitness_counts_erased_bits_only():
    t = make()
    b = t.batch(2, torch.Generator().manual_seed(1))
    bits, erased = b.target[:, 0], b.target[:, 1]
    y = torch.zeros(2, 21, 8)
    y[:, -3:] = (bits * 2 - 1).unsqueeze(1)
    assert torch.equal(t.fitness(y, b), torch.ones(2))
    # Flipping a shown (non-erased) bit changes nothing; flipping an erased one costs 1/4.
    shown = (erased[0] == 0).nonzero()[0, 0]
    hidden = (erased[0] == 1).nonzero()[0, 0]
    y[0, -3:, shown] *= -1
    assert torch.equal(t.fitness(y, b), torch.ones(2))
    y[0, -3:, hidden] *= -1
    assert torch.allclose(t.fitness(y, b), torch.tensor([0.75, 1.0]))


def _observer(noise: float, seed: int = 3) -> tuple[float, float]:
    task = make_task(parse_config({"task": {"name": "pattern_memory", "noise": noise}}).task)
    assert has_observer(task)
    return observer_accuracy(task, 400, seed=seed)


def test_observer_completes_from_the_shown_patterns_and_degrades_with_noise():
    figures = [_observer(q) for q in (0.0, 0.1, 0.2, 0.3)]
    assert figures[0][0] >= 0.99
    for (m0, s0), (m1, s1) in zip(figures, figures[1:]):
        assert m1 <= m0 + 2 * math.hypot(s0, s1)
    assert 0.8 < figures[3][0] < figures[0][0] - 2 * math.hypot(figures[0][1], figures[3][1])
    assert _observer(0.2) == figures[2] and _observer(0.2, seed=4) != figures[2]


def test_observer_answers_with_a_shown_pattern_from_the_inputs_alone():
    t = make()  # clean, rate_on 1: the completion is exact unless two patterns share the shown bits
    b = t.batch(64, torch.Generator().manual_seed(2))
    y = t.observe(b, torch.Generator().manual_seed(0))
    assert torch.equal(y, t.observe(Batch(b.x, torch.zeros_like(b.target)), torch.Generator().manual_seed(0)))
    assert y.shape == (64, t.steps, 8)
    answer = (y[:, -1] > 0).float()
    for i in range(64):
        shown = [b.x[i, s * 3, :8] for s in range(3)]
        assert any(torch.equal(p, answer[i]) for p in shown)
    assert t.fitness(y, b).mean() > 0.9
