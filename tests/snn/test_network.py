"""The plastic network: a hand-worked trace, every family x mode on every projection, gradients,
sample independence, seeding and pickling."""

from __future__ import annotations

import itertools
import math
import pickle

import pytest
import torch

from hybridopt.snn.network import PROJECTIONS, NetworkSpec, PlasticSNN, ProjectionSpec
from hybridopt.snn.plasticity import RULES
from tests.conftest import FAMILIES, MODULATIONS

CASES = list(itertools.product(PROJECTIONS, FAMILIES, MODULATIONS))
IDS = [f"{p}-{r}-{m}" for p, r, m in CASES]

N_IN, N_HIDDEN, N_OUT, STEPS = 6, 12, 3, 60


def _spec(**projections: ProjectionSpec) -> NetworkSpec:
    # input gain 2 and recurrent gain 1 make the hidden layer fire at ~15-25% with 30% input spikes;
    # the fused kernel gives the reference's values bit for bit, which the equalities here need
    # (the compiled steps round differently; tests/snn/test_compiled.py checks them to tolerance)
    return NetworkSpec(
        n_in=N_IN, hidden=N_HIDDEN, n_out=N_OUT, input_gain=2.0, recurrent_gain=1.0, kernel="fused", **projections
    )


def _plastic_spec(projection: str, rule: str, mode: str) -> NetworkSpec:
    return _spec(**{projection: ProjectionSpec(rule=rule, modulation=mode)})


def _input(batch: int, steps: int = STEPS, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, steps, N_IN, generator=gen) < 0.3).float()


# --------------------------------------------------------------------------- a trace by hand
def test_hand_worked_trace_with_recurrent_hebbian():
    # 1 input, 2 hidden, 1 output; beta = 0.5, theta = 1, reset to zero, readout decay 0.5.
    # W_in = [[1.5, 0.5]], W = [[0, 1], [1.2, 0]], W_out = [[1], [2]], biases 0; recurrent
    # hebbian plain with alpha = 0.5, eta = 1, trace decay 0.5.  Input x = 1, 0, 0, 0.
    #
    # t=1: I = [1.5, 0.5]                       v = [1.5, 0.5]    s = [1, 0]  y = 1
    #      recurrent pre s_0 = 0: xpre = [0, 0], xpost = [1, 0], D = 0, H = 0
    # t=2: I = s_1 W = [0, 1]                   v = [0, 0.25 + 1] s = [0, 1]  y = 0.5 + 2 = 2.5
    #      xpre = [1, 0], xpost = [0.5, 1], H = [[0.5, 1], [0, 0]]
    # t=3: I = s_2 (W + 0.5 H) = [1.2, 0]       v = [1.2, 0]      s = [1, 0]  y = 1.25 + 1 = 2.25
    #      xpre = [0.5, 1], xpost = [1.25, 0.5], D = [[0.625, 0.25], [1.25, 0.5]]
    #      H = [[1.125, 1.25], [1.25, 0.5]]
    # t=4: I = s_3 (W + 0.5 H) = [0.5625, 1.625] v = [0.5625, 1.625] s = [0, 1]  y = 1.125 + 2 = 3.125
    #      (without the plastic part I would be [0, 1]: v = 1 is not a spike)
    #      xpre = [1.25, 0.5], xpost = [0.625, 1.25], D = [[0.78125, 1.5625], [0.3125, 0.625]]
    #      H = [[1.90625, 2.8125], [1.5625, 1.125]]
    spec = NetworkSpec(
        n_in=1,
        hidden=2,
        n_out=1,
        beta=0.5,
        theta=1.0,
        reset="zero",
        readout_decay=0.5,
        recurrent=ProjectionSpec(rule="hebbian", alpha_init=0.5, eta_init=1.0, trace_decay=0.5, h_max=10.0),
    )
    net = PlasticSNN(spec)
    with torch.no_grad():
        net.projections["input"].W.copy_(torch.tensor([[1.5, 0.5]]))
        net.projections["recurrent"].W.copy_(torch.tensor([[0.0, 1.0], [1.2, 0.0]]))
        net.projections["readout"].W.copy_(torch.tensor([[1.0], [2.0]]))
    x = torch.tensor([[[1.0], [0.0], [0.0], [0.0]]])
    state = net.initial_state(1)
    vs = []
    for t in range(4):
        _, _, state = net.step(x[:, t], state)
        vs.append(state.lif.v[0].tolist())
    torch.testing.assert_close(torch.tensor(vs), torch.tensor([[1.5, 0.5], [0.0, 1.25], [1.2, 0.0], [0.5625, 1.625]]))

    y, s, final = net(x)
    assert s[0].tolist() == [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]
    torch.testing.assert_close(y[0, :, 0], torch.tensor([1.0, 2.5, 2.25, 3.125]))
    torch.testing.assert_close(final.recurrent.H[0], torch.tensor([[1.90625, 2.8125], [1.5625, 1.125]]))
    torch.testing.assert_close(final.recurrent.pre_trace[0], torch.tensor([1.25, 0.5]))
    torch.testing.assert_close(final.recurrent.post_trace[0], torch.tensor([0.625, 1.25]))
    assert final.input is None and final.readout is None


def test_hand_worked_trace_with_input_and_readout_hebbian():
    # 1 input, 2 hidden, 1 output; beta = 0.5, theta = 1, reset to zero, readout decay 0.5, no recurrence.
    # W_in = [[1.5, 0.8]], W_out = [[1], [0.5]]; input and readout hebbian plain, alpha = 0.5, eta = 1,
    # trace decay 0.5.  Input x = 1, 1.  Input plasticity sees (x_t, s_t), readout (s_t, tanh y_t).
    #
    # t=1: I = [1.5, 0.8]  s = [1, 0]  y_1 = 1
    #      input:   xpre = [1], xpost = [1, 0]                 H_in = [[1, 0]]
    #      readout: xpre = [1, 0], xpost = [tanh 1]            H_out = [[tanh 1], [0]]
    # t=2: I = 1 (W_in + 0.5 H_in) = [2, 0.8];  v = [0 + 2, 0.4 + 0.8] = [2, 1.2]  s = [1, 1]
    #      y_2 = 0.5 y_1 + s (W_out + 0.5 H_out) = 0.5 + (1 + 0.5 tanh 1) + 0.5 = 2 + 0.5 tanh 1
    #      input:   xpre = [1.5], xpost = [1.5, 1]             H_in = [[1 + 2.25, 1.5]]
    #      readout: xpre = [1.5, 1], xpost = q = 0.5 tanh 1 + tanh y_2
    #                                                          H_out = [[tanh 1 + 1.5 q], [q]]
    plastic = ProjectionSpec(rule="hebbian", alpha_init=0.5, eta_init=1.0, trace_decay=0.5, h_max=10.0)
    spec = NetworkSpec(
        n_in=1, hidden=2, n_out=1, beta=0.5, theta=1.0, readout_decay=0.5, input=plastic, readout=plastic
    )
    net = PlasticSNN(spec)
    with torch.no_grad():
        net.projections["input"].W.copy_(torch.tensor([[1.5, 0.8]]))
        net.projections["recurrent"].W.zero_()
        net.projections["readout"].W.copy_(torch.tensor([[1.0], [0.5]]))
    y, s, state = net(torch.ones(1, 2, 1))
    t1 = math.tanh(1.0)
    y2 = 2.0 + 0.5 * t1
    q = 0.5 * t1 + math.tanh(y2)
    assert s[0].tolist() == [[1.0, 0.0], [1.0, 1.0]]
    torch.testing.assert_close(state.lif.v[0], torch.tensor([2.0, 1.2]))
    torch.testing.assert_close(y[0, :, 0], torch.tensor([1.0, y2]))
    torch.testing.assert_close(state.input.H[0], torch.tensor([[3.25, 1.5]]))
    torch.testing.assert_close(state.readout.post_trace[0], torch.tensor([q]))
    torch.testing.assert_close(state.readout.H[0], torch.tensor([[t1 + 1.5 * q], [q]]))
    assert state.recurrent is None


# --------------------------------------------------------------------------- every family x mode on every projection
@pytest.mark.parametrize("projection, rule, mode", CASES, ids=IDS)
def test_plastic_network_runs(projection, rule, mode):
    B = 3
    net = PlasticSNN(_plastic_spec(projection, rule, mode))
    y, s, state = net(_input(B))
    assert y.shape == (B, STEPS, N_OUT) and s.shape == (B, STEPS, N_HIDDEN)
    assert torch.isfinite(y).all()
    assert 0.0 < s.mean() < 1.0
    n_pre, n_post = net.spec.shape(projection)
    for name in PROJECTIONS:
        st = getattr(state, name)
        if name != projection:
            assert st is None
            continue
        assert st.H.shape == (B, n_pre, n_post)
        assert st.H.abs().max() <= net.spec.projection(name).h_max
        assert st.H.abs().sum() > 0  # the rule did something
        assert (st.E is not None) == (mode == "retroactive")
        assert (st.phi is not None) == (rule == "bcm")


STATIC_PARAMETERS = {"projections.input.W", "projections.recurrent.W", "projections.readout.W", "b_hidden", "b_out"}


def test_static_network_holds_no_plastic_state():
    net = PlasticSNN(_spec())
    assert {n for n, _ in net.named_parameters()} == STATIC_PARAMETERS
    for name in PROJECTIONS:
        assert not hasattr(net.projections[name], "alpha")
    _, _, state = net(_input(2, steps=5))
    assert state.input is None and state.recurrent is None and state.readout is None
    params = net.params()
    for name in PROJECTIONS:
        p = getattr(params, name)
        assert p.alpha is None and p.w_M is None and not p.coeffs


@pytest.mark.parametrize("projection, rule, mode", CASES, ids=IDS)
def test_static_equals_plastic_with_zero_alpha(projection, rule, mode):
    static = PlasticSNN(_spec(), seed=0)
    plastic = PlasticSNN(_plastic_spec(projection, rule, mode), seed=1)
    with torch.no_grad():
        for name in PROJECTIONS:
            plastic.projections[name].W.copy_(static.projections[name].W)
        plastic.b_hidden.copy_(static.b_hidden)
        plastic.b_out.copy_(static.b_out)
        plastic.projections[projection].alpha.zero_()
    x = _input(3)
    y0, s0, _ = static(x)
    y1, s1, state = plastic(x)
    assert s0.mean() > 0
    assert getattr(state, projection).H.abs().sum() > 0  # H evolved, but alpha = 0 hides it
    assert torch.equal(s0, s1)
    torch.testing.assert_close(y1, y0, rtol=0.0, atol=0.0)
    # with the default alpha the plastic network does differ
    with torch.no_grad():
        plastic.projections[projection].alpha.fill_(0.05)
    y2, _, _ = plastic(x)
    assert not torch.equal(y2, y0)


# --------------------------------------------------------------------------- gradients
def _expected_learned(projection: str, rule: str, mode: str) -> set[str]:
    prefix = f"projections.{projection}."
    names = {"alpha"} | {
        "plain": {"eta"},
        "neuromodulated": {"mod_a", "mod_b", "w_M", "b_M"},
        "retroactive": {"eta_E", "w_M", "b_M"},
    }[mode]
    names |= {f"coeffs.{c}" for c in RULES[rule].coefficients}
    return STATIC_PARAMETERS | {prefix + n for n in names}


@pytest.mark.parametrize("projection, rule, mode", CASES, ids=IDS)
def test_gradients_reach_every_parameter(projection, rule, mode):
    net = PlasticSNN(_plastic_spec(projection, rule, mode))
    x = _input(2)
    target = torch.randn(2, STEPS, N_OUT, generator=torch.Generator().manual_seed(1))
    y, s, _ = net(x)
    assert STEPS >= 50 and s.mean() > 0.05
    (y * target).mean().backward()
    named = dict(net.named_parameters())
    assert set(named) == _expected_learned(projection, rule, mode)
    for name, p in named.items():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_gradients_with_every_projection_plastic():
    spec = _spec(
        input=ProjectionSpec(rule="hebbian", modulation="neuromodulated"),
        recurrent=ProjectionSpec(rule="bcm", modulation="retroactive", coefficients={"tau_phi": 5.0}),
        readout=ProjectionSpec(rule="stdp", modulation="plain", eta_per_neuron=False),
    )
    net = PlasticSNN(spec)
    assert net.projections["readout"].eta.shape == (1,)
    assert net.projections["recurrent"].coeffs["tau_phi"].item() == 5.0
    y, s, state = net(_input(2))
    assert s.mean() > 0.05
    y.square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert all(getattr(state, n) is not None for n in PROJECTIONS)


# --------------------------------------------------------------------------- independence, seeds, pickling
MIXED = dict(
    input=ProjectionSpec(rule="oja", modulation="neuromodulated"),
    recurrent=ProjectionSpec(rule="stdp", modulation="retroactive"),
    readout=ProjectionSpec(rule="bcm", modulation="plain"),
)


@pytest.mark.parametrize(
    "projections",
    [
        {name: ProjectionSpec(rule=r, modulation=m) for name in PROJECTIONS}
        for r, m in itertools.product(FAMILIES, MODULATIONS)
    ]
    + [MIXED],
    ids=[f"all-{r}-{m}" for r, m in itertools.product(FAMILIES, MODULATIONS)] + ["mixed"],
)
def test_samples_are_independent(projections):
    net = PlasticSNN(_spec(**projections))
    x = _input(3)
    x_changed = x.clone()
    x_changed[1] = _input(1, seed=99)[0]
    assert not torch.equal(x, x_changed)
    y, s, state = net(x)
    y2, s2, state2 = net(x_changed)
    assert not torch.equal(y[1], y2[1])  # sample 2 itself did change
    for b in (0, 2):
        assert torch.equal(y[b], y2[b])
        assert torch.equal(s[b], s2[b])
        for name in PROJECTIONS:
            assert torch.equal(getattr(state, name).H[b], getattr(state2, name).H[b]), name


@pytest.mark.parametrize("projections", [{}, MIXED], ids=["static", "mixed"])
def test_same_seed_same_output_different_seed_different_weights(projections):
    spec = _spec(**projections)
    rng = torch.get_rng_state()
    a, b, c = PlasticSNN(spec, seed=5), PlasticSNN(spec, seed=5), PlasticSNN(spec, seed=6)
    assert torch.equal(torch.get_rng_state(), rng)  # a private generator: the global one is untouched
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), name
    for name in PROJECTIONS:
        assert not torch.equal(a.projections[name].W, c.projections[name].W)
    x = _input(2)
    ya, sa, _ = a(x)
    yb, sb, _ = b(x)
    yc, _, _ = c(x)
    assert torch.equal(ya, yb) and torch.equal(sa, sb)
    assert not torch.equal(ya, yc)


@pytest.mark.parametrize("projections", [{}, MIXED], ids=["static", "mixed"])
def test_network_pickles(projections):
    net = PlasticSNN(_spec(**projections), seed=3)
    x = _input(2, steps=20)
    y, s, state = net(x)
    clone = pickle.loads(pickle.dumps(net))
    assert clone.spec == net.spec
    assert clone.state_dict().keys() == net.state_dict().keys()
    for k, v in net.state_dict().items():
        assert torch.equal(v, clone.state_dict()[k]), k
    y2, s2, state2 = clone(x)
    assert torch.equal(y, y2) and torch.equal(s, s2)
    # the episode state pickles too
    restored = pickle.loads(pickle.dumps(state))
    for name in PROJECTIONS:
        if getattr(state, name) is not None:
            assert torch.equal(getattr(restored, name).H, getattr(state, name).H)


def test_spec_validation():
    with pytest.raises(ValueError, match="rule"):
        ProjectionSpec(rule="hebb")
    with pytest.raises(ValueError, match="modulation"):
        ProjectionSpec(rule="hebbian", modulation="dopamine")
    with pytest.raises(ValueError, match="coefficient"):
        ProjectionSpec(rule="hebbian", coefficients={"tau_phi": 3.0})


@pytest.mark.parametrize("per_neuron", [True, False])
@pytest.mark.parametrize("mode", MODULATIONS)
def test_a_projection_has_the_parameters_its_mode_declares(mode: str, per_neuron: bool):
    from hybridopt.snn.plasticity import MODES

    proj = ProjectionSpec(rule="bcm", modulation=mode, eta_init=0.3, eta_E_init=0.2, eta_per_neuron=per_neuron)
    net = PlasticSNN(NetworkSpec(n_in=3, hidden=5, n_out=2, recurrent=proj), seed=1)
    params = dict(net.projections["recurrent"].named_parameters())
    declared = MODES[mode].params
    modulator = {"w_M", "b_M"} if MODES[mode].needs_modulator else set()
    assert set(params) == {"W", "alpha", "coeffs.tau_phi", *(p.name for p in declared), *modulator}
    groups = net.parameter_groups()
    for p in declared:
        assert params[p.name].shape == ((5 if per_neuron else 1,) if p.per_post else ())
        assert torch.all(params[p.name] == p.init(proj))
        assert groups[f"projections.recurrent.{p.name}"] == p.group
    got = net.projections["recurrent"].params().mod
    assert {f for f in got._fields if getattr(got, f) is not None} == {p.name for p in declared}
    assert groups["projections.recurrent.coeffs.tau_phi"] == "rule" and groups["b_hidden"] == "weights"


def test_fresh_weights_are_drawn_from_the_construction_distribution_by_seed():
    spec = NetworkSpec(n_in=400, hidden=300, n_out=200, input=ProjectionSpec(rule="hebbian"), recurrent_gain=0.5)
    net = PlasticSNN(spec, seed=0)
    params = net.params()
    a, b, a2 = (net.fresh_weights(params, s, scale={"readout": 0.1}) for s in (1, 2, 1))
    for name, gain in {"input": 1.0 / 20, "recurrent": 0.5 / math.sqrt(300), "readout": 0.1 / math.sqrt(300)}.items():
        W = getattr(a, name).W
        assert W.shape == getattr(params, name).W.shape and abs(W.std().item() / gain - 1) < 0.02, name
        assert torch.equal(W, getattr(a2, name).W) and not torch.equal(W, getattr(b, name).W)
        assert not torch.equal(W, getattr(params, name).W)
    assert a.input.alpha is params.input.alpha and a.b_hidden is params.b_hidden  # only W is drawn anew


# --------------------------------------------------------------------------- many parameter sets
def _perturbed(net: PlasticSNN, k: int):
    """The network's parameters, each tensor moved by its own draw for member ``k``."""
    from torch.utils._pytree import tree_map

    gen = torch.Generator().manual_seed(100 + k)
    return tree_map(
        lambda t: t + 0.2 * torch.randn(t.shape, generator=gen) if isinstance(t, torch.Tensor) else t, net.params()
    )


@pytest.mark.parametrize(
    "projections",
    [
        {},
        MIXED,
        {"input": ProjectionSpec(rule="bcm", modulation="neuromodulated", modulator_tau=4.0)},
        {"recurrent": ProjectionSpec(rule="abcd", modulation="plain", eta_per_neuron=False)},
    ],
    ids=["static", "mixed", "bcm-filtered", "abcd-scalar-eta"],
)
def test_members_stepped_together_equal_each_member_stepped_alone(projections):
    from hybridopt.snn.step import MembersStep, StepConstants, network_step, stack_members

    net = PlasticSNN(_spec(**projections), seed=3)
    M, B = 3, 2
    members = [_perturbed(net, k) for k in range(M)]
    params = stack_members(members)
    state = stack_members([net.initial_state(B)] * M)
    alone = [net.initial_state(B) for _ in range(M)]
    consts = StepConstants.of(net.spec)
    step = MembersStep(params, net.spec, consts)  # built once, stepped through the whole sequence
    x = torch.stack([_input(B, seed=k) for k in range(M)])  # M x B x T x N_in
    with torch.inference_mode():
        for t in range(STEPS):
            y, s, state = step(x[:, :, t], state)
            for k in range(M):
                yk, sk, alone[k] = network_step(members[k], net.spec, x[k, :, t], alone[k], None, consts)
                # the same operations; a batched product may sum in another order (float rounding)
                torch.testing.assert_close(y[k], yk, rtol=1e-5, atol=1e-5)
                assert torch.equal(s[k], sk)
    for k in range(M):
        for name in PROJECTIONS:
            if getattr(alone[k], name) is not None:
                torch.testing.assert_close(getattr(state, name).H[k], getattr(alone[k], name).H, rtol=1e-5, atol=1e-5)
    assert float(s.mean()) > 0.0  # the members do fire
    if projections:  # and their plastic states differ: each member runs its own parameters
        H = next(getattr(state, n).H for n in PROJECTIONS if getattr(state, n) is not None)
        assert not torch.equal(H[0], H[1]) and float(H.abs().max()) > 0.0
