"""LIF neurons: golden traces worked out by hand, shapes, and the surrogate gradients."""

from __future__ import annotations

import math

import pytest
import torch

from hybridopt.snn.neurons import (
    LIFParameters,
    arctan_spike,
    fast_sigmoid_spike,
    lif_initial_state,
    lif_step,
    surrogate_derivative,
)
from tests.conftest import CONFIGS


def _run(currents: list[list[float]], p: LIFParameters) -> tuple[list[list[float]], list[list[float]]]:
    """Step a 1 x N population through ``currents`` (T x N); returns the v and s traces."""
    state = lif_initial_state(1, len(currents[0]))
    vs, ss = [], []
    for row in currents:
        s, state = lif_step(torch.tensor([row]), state, p)
        vs.append(state.v[0].tolist())
        ss.append(s[0].tolist())
    return vs, ss


# Neuron 0 gets a constant 0.6 (fires every third step), neuron 1 a constant 1.5 (fires every step).
# beta = 0.5, theta = 1.
CURRENTS = [[0.6, 1.5]] * 7


def test_golden_trace_reset_to_zero():
    # v_t = 0.5 v_{t-1} (1 - s_{t-1}) + I_t
    # neuron 0: 0.6, 0.9, 1.05 (spike), 0.6 (reset), 0.9, 1.05 (spike), 0.6
    # neuron 1: 1.5 every step (it spikes every step, so the reset wipes the memory every step)
    vs, ss = _run(CURRENTS, LIFParameters(beta=0.5, theta=1.0, reset="zero"))
    expected_v = [[0.6, 1.5], [0.9, 1.5], [1.05, 1.5], [0.6, 1.5], [0.9, 1.5], [1.05, 1.5], [0.6, 1.5]]
    expected_s = [[0, 1], [0, 1], [1, 1], [0, 1], [0, 1], [1, 1], [0, 1]]
    torch.testing.assert_close(torch.tensor(vs), torch.tensor(expected_v))
    assert ss == expected_s


def test_golden_trace_reset_by_subtraction():
    # v_t = 0.5 v_{t-1} - 1 * s_{t-1} + I_t
    # neuron 0: 0.6, 0.9, 1.05 (spike), 0.525 - 1 + 0.6 = 0.125, 0.6625, 0.93125, 1.065625 (spike)
    # neuron 1: 1.5, 0.75 - 1 + 1.5 = 1.25, 1.125, 1.0625, 1.03125, 1.015625, 1.0078125 (all spikes)
    vs, ss = _run(CURRENTS, LIFParameters(beta=0.5, theta=1.0, reset="subtract"))
    expected_v = [
        [0.6, 1.5],
        [0.9, 1.25],
        [1.05, 1.125],
        [0.125, 1.0625],
        [0.6625, 1.03125],
        [0.93125, 1.015625],
        [1.065625, 1.0078125],
    ]
    expected_s = [[0, 1], [0, 1], [1, 1], [0, 1], [0, 1], [0, 1], [1, 1]]
    torch.testing.assert_close(torch.tensor(vs), torch.tensor(expected_v))
    assert ss == expected_s


def test_threshold_is_strict():
    # v = theta exactly is not a spike: s = H(v - theta) with H(0) = 0.
    s, _ = lif_step(torch.tensor([[1.0, 1.0001]]), lif_initial_state(1, 2), LIFParameters(theta=1.0))
    assert s.tolist() == [[0.0, 1.0]]


@pytest.mark.parametrize("reset", ["zero", "subtract"])
@pytest.mark.parametrize("surrogate", ["fast_sigmoid", "arctan"])
def test_batch_shapes_and_rows_are_independent(reset, surrogate):
    B, N = 4, 5
    p = LIFParameters(reset=reset, surrogate=surrogate)
    state = lif_initial_state(B, N)
    assert state.v.shape == (B, N) and state.s.shape == (B, N)
    assert state.v.abs().sum() == 0 and state.s.abs().sum() == 0
    gen = torch.Generator().manual_seed(0)
    row = torch.rand(8, 1, N, generator=gen) * 2.0
    for t in range(8):
        s, state = lif_step(row[t].expand(B, N), state, p)
        assert s.shape == (B, N) and state.v.shape == (B, N) and state.s.shape == (B, N)
        # the same current in every sample row gives the same state in every row
        assert torch.equal(state.v, state.v[:1].expand(B, N))
        assert torch.equal(s, state.s)
        assert set(s.unique().tolist()) <= {0.0, 1.0}


def test_unknown_reset_and_surrogate_raise():
    state = lif_initial_state(1, 1)
    with pytest.raises(ValueError, match="reset"):
        lif_step(torch.ones(1, 1), state, LIFParameters(reset="hard"))
    with pytest.raises(ValueError, match="surrogate"):
        lif_step(torch.ones(1, 1), state, LIFParameters(surrogate="sigmoid"))
    with pytest.raises(ValueError, match="surrogate"):
        surrogate_derivative("sigmoid", torch.zeros(1), 1.0)


# x values and the surrogate derivatives at them, worked out by hand.
X = [-0.5, -0.1, 0.0, 0.2, 1.0]
# fast sigmoid, k = 10: 1 / (10 |x| + 1)^2
FAST_SIGMOID_K10 = [1 / 36, 1 / 4, 1.0, 1 / 9, 1 / 121]
# fast sigmoid, k = 2: 1 / (2 |x| + 1)^2
FAST_SIGMOID_K2 = [1 / 4, 1 / 1.44, 1.0, 1 / 1.96, 1 / 9]
# arctan, k = 10: 5 / (1 + (5 pi x)^2)
ARCTAN_K10 = [
    5 / (1 + (2.5 * math.pi) ** 2),
    5 / (1 + (0.5 * math.pi) ** 2),
    5.0,
    5 / (1 + math.pi**2),
    5 / (1 + (5 * math.pi) ** 2),
]
# arctan, k = 2: 1 / (1 + (pi x)^2)
ARCTAN_K2 = [
    1 / (1 + (0.5 * math.pi) ** 2),
    1 / (1 + (0.1 * math.pi) ** 2),
    1.0,
    1 / (1 + (0.2 * math.pi) ** 2),
    1 / (1 + math.pi**2),
]


@pytest.mark.parametrize(
    "name, spike_fn, slope, expected",
    [
        ("fast_sigmoid", fast_sigmoid_spike, 10.0, FAST_SIGMOID_K10),
        ("fast_sigmoid", fast_sigmoid_spike, 2.0, FAST_SIGMOID_K2),
        ("arctan", arctan_spike, 10.0, ARCTAN_K10),
        ("arctan", arctan_spike, 2.0, ARCTAN_K2),
    ],
)
def test_surrogate_backward_is_the_closed_form(name, spike_fn, slope, expected):
    x = torch.tensor(X, dtype=torch.float64, requires_grad=True)
    s = spike_fn(x, slope)
    assert s.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]  # Heaviside forward, H(0) = 0
    (grad,) = torch.autograd.grad(s.sum(), x)
    torch.testing.assert_close(grad, torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(
        surrogate_derivative(name, x.detach(), slope), torch.tensor(expected, dtype=torch.float64)
    )
    # the upstream gradient is multiplied through
    upstream = torch.tensor([1.0, -2.0, 3.0, 0.5, 0.0], dtype=torch.float64)
    (grad,) = torch.autograd.grad(spike_fn(x, slope), x, upstream)
    torch.testing.assert_close(grad, upstream * torch.tensor(expected, dtype=torch.float64))


def test_gradient_flows_through_the_membrane_not_the_reset():
    # beta = 0.5, theta = 1, fast sigmoid k = 10, reset to zero; I_1 = 0.8, I_2 = 0.5.
    # v_1 = 0.8 (no spike), v_2 = 0.5 * 0.8 * (1 - s_1) + 0.5 = 0.9 (no spike).
    # ds_1/dI_1 = 1 / (10 * 0.2 + 1)^2 = 1/9.
    # ds_2/dI_1 = sg(v_2 - 1) * beta * (1 - s_1) = 1 / (10 * 0.1 + 1)^2 * 0.5 = 0.125: the reset
    # factor (1 - s_1) is detached, so there is no extra - beta v_1 ds_1/dI_1 = -0.4/9 term.
    p = LIFParameters(beta=0.5, theta=1.0, reset="zero", surrogate="fast_sigmoid", slope=10.0)
    i1 = torch.tensor([[0.8]], dtype=torch.float64, requires_grad=True)
    i2 = torch.tensor([[0.5]], dtype=torch.float64, requires_grad=True)
    state = lif_initial_state(1, 1, dtype=torch.float64)
    s1, state = lif_step(i1, state, p)
    (g1,) = torch.autograd.grad(s1.sum(), i1, retain_graph=True)
    s2, state = lif_step(i2, state, p)
    g21, g22 = torch.autograd.grad(s2.sum(), (i1, i2))
    assert s1.item() == 0.0 and s2.item() == 0.0
    assert g1.item() == pytest.approx(1 / 9)
    assert g21.item() == pytest.approx(0.125)
    assert g22.item() == pytest.approx(0.25)


def test_subtractive_reset_gradient_ignores_the_spike():
    # reset="subtract": v_2 = beta v_1 - theta s_1 + I_2 with s_1 detached, so dv_2/dI_1 = beta
    # even when neuron 1 spiked.  I_1 = 1.2 (spike), I_2 = 0.3: v_2 = 0.6 - 1 + 0.3 = -0.1.
    # ds_2/dI_1 = 1 / (10 * 1.1 + 1)^2 * 0.5 = 0.5 / 144.
    p = LIFParameters(beta=0.5, theta=1.0, reset="subtract", slope=10.0)
    i1 = torch.tensor([[1.2]], dtype=torch.float64, requires_grad=True)
    state = lif_initial_state(1, 1, dtype=torch.float64)
    s1, state = lif_step(i1, state, p)
    s2, state = lif_step(torch.tensor([[0.3]], dtype=torch.float64), state, p)
    (g,) = torch.autograd.grad(s2.sum(), i1)
    assert s1.item() == 1.0
    assert state.v.item() == pytest.approx(-0.1)
    assert g.item() == pytest.approx(0.5 / 144)


def test_k_winners_raise_the_threshold_midway_to_the_next_potential_and_differentiate_every_unit_near_it():
    # one step from rest, so v = I; theta 1, k = 2.  Sample 0: v = (1.5, 2.0, 0.5, 1.2): the second
    # and third largest are 1.5 and 1.2, theta_t = max(1, 1.35) = 1.35, and only 2.0 and 1.5 spike
    # (1.2 is above theta but not above theta_t).  Sample 1: v = (0.2, 1.1, 0.3, 0.9): midway
    # between 0.9 and 0.3 is 0.6 < theta, so theta_t = theta and the one unit above it spikes.
    # Sample 2: v = (2.0, 1.6, 0.8, 0.1): the third largest (0.8) is below theta, but midway (1.2)
    # is above it: theta_t = 1.2, and the same two units spike as under theta.
    p = LIFParameters(beta=0.9, theta=1.0, slope=2.0, winners=2)
    current = torch.tensor([[1.5, 2.0, 0.5, 1.2], [0.2, 1.1, 0.3, 0.9], [2.0, 1.6, 0.8, 0.1]], requires_grad=True)
    s, _ = lif_step(current, lif_initial_state(3, 4), p)
    assert s.tolist() == [[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]
    s.sum().backward()
    # d s_j / d I_j = 1 / (k |v_j - theta_t| + 1)^2 with k = 2, theta_t detached: every unit,
    # winner or not, gets the surrogate derivative at its distance from the raised threshold;
    # the first loser sits as far below it as the last winner above, never at its peak
    d = lambda x: 1.0 / (2.0 * abs(x) + 1.0) ** 2  # noqa: E731
    expected = [
        [d(0.15), d(0.65), d(-0.85), d(-0.15)],
        [d(-0.8), d(0.1), d(-0.7), d(-0.1)],
        [d(0.8), d(0.4), d(-0.4), d(-1.1)],
    ]
    torch.testing.assert_close(current.grad, torch.tensor(expected))


def test_competing_plastic_layer_keeps_its_gradient_bounded_at_a_large_plastic_gain():
    """Under competition a unit at the raised threshold gets the surrogate's peak derivative; with
    the threshold at the (k+1)-th potential itself, one loser sat there at every step, and through
    the Hebbian state (``W + alpha H``) the gradient of one episode grew with ``alpha`` past 1e18
    at ``alpha = 4``, with no spike of the forward pass changed.  Midway, it stays of order one."""
    from hybridopt.config import load_config
    from hybridopt.train.gradient import build

    cfg = load_config(
        CONFIGS / "cue_association_noisy_pools_search.yaml",
        [
            "network.winners=2",
            "plasticity.input.rule=hebbian",
            "plasticity.readout.rule=none",
            "plasticity.input.alpha_init=4.0",
            "network.kernel=reference",
            "task.trials=6",
        ],
    )
    task, net = build(cfg)
    batch = task.batch(8, torch.Generator().manual_seed(0))
    y, s, _ = net(batch.x)
    assert 0 < s.mean() < 0.1
    task.loss(y, batch).backward()
    norm = torch.stack([p.grad.norm() for p in net.parameters() if p.grad is not None]).norm()
    assert norm < 100, norm


@pytest.mark.parametrize("winners", [0, 4, 9])
def test_without_competition_k_winners_change_nothing(winners):
    # k = 0 is off, and k >= N (here 4) leaves no (k+1)-th unit to compete with
    gen = torch.Generator().manual_seed(0)
    current = torch.rand(3, 4, generator=gen) * 3
    plain, _ = lif_step(current, lif_initial_state(3, 4), LIFParameters())
    competing, _ = lif_step(current, lif_initial_state(3, 4), LIFParameters(winners=winners))
    assert torch.equal(competing, plain)
    assert plain.sum(1).max() > 2  # more than 2 of 4 units fire in some sample: k = 2 would bind
    fewer, _ = lif_step(current, lif_initial_state(3, 4), LIFParameters(winners=2))
    assert fewer.sum(1).max() == 2
