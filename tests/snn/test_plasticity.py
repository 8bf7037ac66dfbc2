"""Plasticity rules and modulation modes against hand-worked examples and a plain-loop reference."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from hybridopt.snn.network import PlasticSNN
from hybridopt.snn.plasticity import (
    MODES,
    RULES,
    Activity,
    ModulationParams,
    PlasticState,
    clamp_coefficient,
    modulator_signal,
    plastic_current,
    plastic_initial_state,
    plasticity_step,
)
from hybridopt.snn.spec import NetworkSpec, ProjectionSpec
from tests.conftest import FAMILIES, MODULATIONS


def T(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


# --------------------------------------------------------------------------- a 2 pre x 3 post example
# trace_decay = 0.5.  Old traces xpre = [1, 2], xpost = [0, 1, 2]; activity pre = [1, 0], post = [0, 1, 1].
# New traces: xpre = 0.5 [1, 2] + [1, 0] = [1.5, 1.0];  xpost = 0.5 [0, 1, 2] + [0, 1, 1] = [0, 1.5, 2.0].
H0 = [[0.1, 0.2, 0.3], [-0.1, 0.0, 0.5]]
ETA = [0.1, 0.2, 0.3]


def _example(*, E=None, phi=None) -> tuple[PlasticState, torch.Tensor, torch.Tensor]:
    state = PlasticState(
        H=T([H0]),
        pre_trace=T([[1.0, 2.0]]),
        post_trace=T([[0.0, 1.0, 2.0]]),
        E=None if E is None else T([E]),
        phi=None if phi is None else T([phi]),
    )
    return state, T([[1.0, 0.0]]), T([[0.0, 1.0, 1.0]])


def _step(rule, mode, state, pre, post, *, h_max, coeffs=None, mod=None, M=None):
    return plasticity_step(
        rule,
        mode,
        state,
        pre,
        post,
        trace_decay=0.5,
        h_max=h_max,
        coeffs={k: T(v) for k, v in (coeffs or {}).items()},
        mod=mod if mod is not None else ModulationParams(eta=T(ETA)),
        M=None if M is None else T(M),
    )


def test_traces_are_low_pass_filters():
    state, pre, post = _example()
    new = _step("hebbian", "plain", state, pre, post, h_max=10.0)
    torch.testing.assert_close(new.pre_trace, T([[1.5, 1.0]]))
    torch.testing.assert_close(new.post_trace, T([[0.0, 1.5, 2.0]]))


def test_hebbian_plain_by_hand():
    # D = xpre xpost^T = [[0, 2.25, 3.0], [0, 1.5, 2.0]];  eta ⊙ D = [[0, 0.45, 0.9], [0, 0.3, 0.6]]
    # H + eta ⊙ D = [[0.1, 0.65, 1.2], [-0.1, 0.3, 1.1]], clipped to h_max = 1.
    state, pre, post = _example()
    new = _step("hebbian", "plain", state, pre, post, h_max=1.0)
    torch.testing.assert_close(new.H, T([[[0.1, 0.65, 1.0], [-0.1, 0.3, 1.0]]]))
    assert new.E is None and new.phi is None


def test_hebbian_plain_scalar_eta_by_hand():
    # eta = 0.1 for every post neuron: H + 0.1 D = [[0.1, 0.425, 0.6], [-0.1, 0.15, 0.7]]
    state, pre, post = _example()
    new = _step("hebbian", "plain", state, pre, post, h_max=1.0, mod=ModulationParams(eta=T([0.1])))
    torch.testing.assert_close(new.H, T([[[0.1, 0.425, 0.6], [-0.1, 0.15, 0.7]]]))


def test_oja_plain_by_hand():
    # D_ij = p_j (xpre_i - H_ij xpost_j), p_j = xpost_j / (1 + xpost_j^2) = [0, 1.5 / 3.25, 2 / 5] = [0, 6/13, 0.4]
    #   j = 0: p = 0 -> 0
    #   j = 1: i = 0: 6/13 (1.5 - 0.2 * 1.5) = 7.2/13;  i = 1: 6/13 (1.0 - 0.0 * 1.5) = 6/13
    #   j = 2: i = 0: 0.4 (1.5 - 0.3 * 2.0) = 0.36;  i = 1: 0.4 (1.0 - 0.5 * 2.0) = 0.0
    # eta ⊙ D = [[0, 1.44/13, 0.108], [0, 1.2/13, 0]]
    state, pre, post = _example()
    new = _step("oja", "plain", state, pre, post, h_max=1.0)
    torch.testing.assert_close(new.H, T([[[0.1, 0.2 + 1.44 / 13, 0.408], [-0.1, 1.2 / 13, 0.5]]]))


@pytest.mark.parametrize("eta", [0.1, 0.9, 1.9])
def test_oja_decay_factor_stays_in_the_unit_interval(eta):
    # dU_ij/dH_ij = 1 + eta dD_ij/dH_ij = 1 - eta xpost_j^2 / (1 + xpost_j^2), in (1 - eta, 1] for any
    # trace (unnormalised, 1 - eta xpost^2: -39 at eta 0.1 and a trace of 20)
    post = torch.tensor([0.0, 0.1, 1.0, 5.0, 20.0, 100.0], dtype=torch.float64)
    act = Activity(T([[1.0, 2.0]]), post.view(1, -1), T([[1.0, 0.0]]), torch.zeros(1, 6, dtype=torch.float64))
    H = torch.full((1, 2, 6), 0.3, dtype=torch.float64, requires_grad=True)
    U = H + eta * RULES["oja"].update(act, H, None, {})
    (dU,) = torch.autograd.grad(U.sum(), H)
    torch.testing.assert_close(dU[0, 0], 1 - eta * post**2 / (1 + post**2))
    assert (dU <= 1).all() and (dU > 1 - eta).all()


def test_oja_networks_on_long_traces_have_finite_gradients():
    # Traces of neurons that fire most steps at trace_decay 0.95 reach 5-20; unnormalised, Oja's rule
    # made every placement's gradient non-finite within one 240-step sequence.
    from hybridopt.snn.network import NetworkSpec, PlasticSNN, ProjectionSpec

    plastic = ProjectionSpec(rule="oja", modulation="plain", trace_decay=0.95, alpha_init=0.3)
    for placement in ("input", "recurrent", "readout"):
        spec = NetworkSpec(n_in=8, hidden=16, n_out=3, input_gain=3.0, **{placement: plastic})
        net = PlasticSNN(spec, seed=0)
        x = (torch.rand(4, 240, 8, generator=torch.Generator().manual_seed(1)) < 0.8).float()
        y, s, final = net(x)
        assert s.mean() > 0.2 and getattr(final, placement).post_trace.max() > 5.0  # long traces
        (y.square().mean() + s.mean()).backward()
        for name, p in net.named_parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), (placement, name)


def test_bcm_plain_by_hand():
    # phi = [0.5, 1, 5], tau_phi = 2.  xpost (xpost - phi) = [0, 1.5 * 0.5, 2 * (-3)] = [0, 0.75, -6]
    # D = xpre_i * that = [[0, 1.125, -9], [0, 0.75, -6]];  eta ⊙ D = [[0, 0.225, -2.7], [0, 0.15, -1.8]]
    # H = [[0.1, 0.425, -2.4], [-0.1, 0.15, -1.3]] -> clipped to [-1, 1]
    # phi <- phi + (xpost^2 - phi) / 2 = [0.5 - 0.25, 1 + 0.625, 5 - 0.5] = [0.25, 1.625, 4.5]
    state, pre, post = _example(phi=[0.5, 1.0, 5.0])
    new = _step("bcm", "plain", state, pre, post, h_max=1.0, coeffs={"tau_phi": 2.0})
    torch.testing.assert_close(new.H, T([[[0.1, 0.425, -1.0], [-0.1, 0.15, -1.0]]]))
    torch.testing.assert_close(new.phi, T([[0.25, 1.625, 4.5]]))


def test_stdp_plain_by_hand():
    # a_plus = 1, a_minus = 0.5; s_pre = [1, 0], s_post = [0, 1, 1]
    # LTP xpre_i s_post_j = [[0, 1.5, 1.5], [0, 1, 1]];  LTD s_pre_i xpost_j = [[0, 1.5, 2], [0, 0, 0]]
    # D = [[0, 0.75, 0.5], [0, 1, 1]];  eta ⊙ D = [[0, 0.15, 0.15], [0, 0.2, 0.3]]
    state, pre, post = _example()
    new = _step("stdp", "plain", state, pre, post, h_max=1.0, coeffs={"a_plus": 1.0, "a_minus": 0.5})
    torch.testing.assert_close(new.H, T([[[0.1, 0.35, 0.45], [-0.1, 0.2, 0.8]]]))


def test_hebbian_neuromodulated_by_hand():
    # M = 0.5, a = [1, 2, -1], b = [0, 0.1, 0.2] -> eta(t) = [0.5, 1.1, -0.3]
    # eta(t) ⊙ D = [[0, 2.475, -0.9], [0, 1.65, -0.6]]
    state, pre, post = _example()
    mod = ModulationParams(mod_a=T([1.0, 2.0, -1.0]), mod_b=T([0.0, 0.1, 0.2]))
    new = _step("hebbian", "neuromodulated", state, pre, post, h_max=10.0, mod=mod, M=[0.5])
    torch.testing.assert_close(new.H, T([[[0.1, 2.675, -0.6], [-0.1, 1.65, -0.1]]]))


def test_hebbian_retroactive_by_hand():
    # E = [[1, 0, -1], [0.5, 0.5, 0]], eta_E = 0.25, M = -0.5
    # E <- 0.75 E + 0.25 D = [[0.75, 0.5625, 0], [0.375, 0.75, 0.5]]
    # H <- H + M E = H - 0.5 E = [[-0.275, -0.08125, 0.3], [-0.2875, -0.375, 0.25]]
    state, pre, post = _example(E=[[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    new = _step("hebbian", "retroactive", state, pre, post, h_max=10.0, mod=ModulationParams(eta_E=T(0.25)), M=[-0.5])
    torch.testing.assert_close(new.E, T([[[0.75, 0.5625, 0.0], [0.375, 0.75, 0.5]]]))
    torch.testing.assert_close(new.H, T([[[-0.275, -0.08125, 0.3], [-0.2875, -0.375, 0.25]]]))


# --------------------------------------------------------------------------- every family x mode vs a plain loop
# Each family's D_ij in plain floats: (xpre_i, xpost_j, pre spike_i, post spike_j, H_ij, phi_j, coefficients).
PLAIN_D = {
    "hebbian": lambda xi, xj, si, sj, h, phi, c: xi * xj,
    "oja": lambda xi, xj, si, sj, h, phi, c: xj / (1.0 + xj**2) * (xi - h * xj),
    "bcm": lambda xi, xj, si, sj, h, phi, c: xi * xj * (xj - phi),
    "stdp": lambda xi, xj, si, sj, h, phi, c: c["a_plus"] * xi * sj - c["a_minus"] * si * xj,
    "abcd": lambda xi, xj, si, sj, h, phi, c: c["A"] * xi * xj + c["B"] * xi + c["C"] * xj + c["D"],
    "anti_hebbian": lambda xi, xj, si, sj, h, phi, c: -c["k"] * xi * xj,  # the tests' own family
}


def test_every_registered_family_has_its_equation_written_out():
    # the plain loop below checks each family against its equation: a new family adds one here
    assert set(PLAIN_D) == set(FAMILIES)


def _reference_step(rule, mode, st, pre, post, lam, h_max, coeffs, eta, mod_a, mod_b, eta_E, M):
    """The equations (DESIGN.md; Oja normalised, see oja_update), with Python floats and loops over b, i, j."""
    B, n_pre, n_post = len(st["H"]), len(pre[0]), len(post[0])
    out = {"H": [], "E": [], "phi": [], "pre_trace": [], "post_trace": []}
    for b in range(B):
        xpre = [lam * st["pre_trace"][b][i] + pre[b][i] for i in range(n_pre)]
        xpost = [lam * st["post_trace"][b][j] + post[b][j] for j in range(n_post)]
        H_b, E_b = [], []
        for i in range(n_pre):
            H_row, E_row = [], []
            for j in range(n_post):
                h = st["H"][b][i][j]
                d = PLAIN_D[rule](xpre[i], xpost[j], pre[b][i], post[b][j], h, st["phi"][b][j], coeffs)
                if mode == "plain":
                    h_new = h + eta[j] * d
                elif mode == "neuromodulated":
                    h_new = h + (mod_a[j] * M[b] + mod_b[j]) * d
                else:  # retroactive
                    e = (1.0 - eta_E) * st["E"][b][i][j] + eta_E * d
                    E_row.append(e)
                    h_new = h + M[b] * e
                H_row.append(min(max(h_new, -h_max), h_max))
            H_b.append(H_row)
            E_b.append(E_row)
        out["H"].append(H_b)
        out["E"].append(E_b)
        out["pre_trace"].append(xpre)
        out["post_trace"].append(xpost)
        if rule == "bcm":
            tau = coeffs["tau_phi"]
            out["phi"].append([st["phi"][b][j] + (xpost[j] ** 2 - st["phi"][b][j]) / tau for j in range(n_post)])
    return out


@pytest.mark.parametrize("h_max", [100.0, 0.5], ids=["unclipped", "clipped"])
@pytest.mark.parametrize("rule, mode", list(itertools.product(FAMILIES, MODULATIONS)))
def test_every_family_and_mode_matches_the_plain_loop(rule, mode, h_max):
    B, n_pre, n_post, lam = 2, 2, 3, 0.7
    gen = torch.Generator().manual_seed(7)

    def rand(*shape, lo=-1.0, hi=1.0):
        return (lo + (hi - lo) * torch.rand(*shape, generator=gen, dtype=torch.float64)).tolist()

    st = {
        "H": rand(B, n_pre, n_post, lo=-0.5, hi=0.5),
        "pre_trace": rand(B, n_pre, lo=0.0, hi=2.0),
        "post_trace": rand(B, n_post, lo=0.0, hi=2.0),
        "E": rand(B, n_pre, n_post),
        "phi": rand(B, n_post, lo=0.0, hi=2.0),
    }
    pre = [[1.0, 0.0], [1.0, 1.0]]
    post = [[0.0, 1.0, 1.0], [1.0, 0.0, 1.0]]
    coeffs = {"tau_phi": 3.0, "a_plus": 0.9, "a_minus": 1.3, "k": 0.6, "A": 0.8, "B": 0.3, "C": -0.4, "D": 0.1}
    eta, mod_a, mod_b, eta_E, M = [0.3, -0.2, 0.5], [0.4, 1.0, -0.6], [0.1, -0.05, 0.2], 0.3, [0.7, -0.4]

    state = plastic_initial_state(rule, mode, B, n_pre, n_post, dtype=torch.float64)
    state = state._replace(
        H=T(st["H"]),
        pre_trace=T(st["pre_trace"]),
        post_trace=T(st["post_trace"]),
        E=T(st["E"]) if state.E is not None else None,
        phi=T(st["phi"]) if state.phi is not None else None,
    )
    mod = {
        "plain": ModulationParams(eta=T(eta)),
        "neuromodulated": ModulationParams(mod_a=T(mod_a), mod_b=T(mod_b)),
        "retroactive": ModulationParams(eta_E=T(eta_E)),
    }[mode]
    new = plasticity_step(
        rule,
        mode,
        state,
        T(pre),
        T(post),
        trace_decay=lam,
        h_max=h_max,
        coeffs={k: T(coeffs[k]) for k in RULES[rule].coefficients},
        mod=mod,
        M=T(M) if MODES[mode].needs_modulator else None,
    )
    ref = _reference_step(rule, mode, st, pre, post, lam, h_max, coeffs, eta, mod_a, mod_b, eta_E, M)

    torch.testing.assert_close(new.H, T(ref["H"]))
    torch.testing.assert_close(new.pre_trace, T(ref["pre_trace"]))
    torch.testing.assert_close(new.post_trace, T(ref["post_trace"]))
    if mode == "retroactive":
        torch.testing.assert_close(new.E, T(ref["E"]))
    else:
        assert new.E is None
    if rule == "bcm":
        torch.testing.assert_close(new.phi, T(ref["phi"]))
    else:
        assert new.phi is None
    # the example is not degenerate: H moved, and the clip is active only when h_max is small
    assert not torch.equal(new.H, state.H)
    assert (new.H.abs() == h_max).any() == (h_max < 1.0)


@pytest.mark.parametrize("rule, mode", list(itertools.product(FAMILIES, MODULATIONS)))
def test_initial_state_shapes(rule, mode):
    st = plastic_initial_state(rule, mode, 4, 2, 3)
    assert st.H.shape == (4, 2, 3) and st.pre_trace.shape == (4, 2) and st.post_trace.shape == (4, 3)
    assert (st.E is not None) == (mode == "retroactive")
    assert (st.phi is not None) == (rule == "bcm")
    if st.E is not None:
        assert st.E.shape == (4, 2, 3)
    if st.phi is not None:
        assert st.phi.shape == (4, 3)
    for t in st:
        assert t is None or t.abs().sum() == 0
    assert plastic_initial_state("none", mode, 4, 2, 3) is None


@pytest.mark.parametrize("rule, mode", list(itertools.product(FAMILIES, MODULATIONS)))
def test_clip_bound_holds_after_big_updates(rule, mode):
    B, n_pre, n_post, h_max = 3, 4, 5, 0.5
    gen = torch.Generator().manual_seed(1)
    state = plastic_initial_state(rule, mode, B, n_pre, n_post)
    mod = ModulationParams(
        eta=torch.full((n_post,), 100.0),
        mod_a=torch.full((n_post,), 100.0),
        mod_b=torch.full((n_post,), 50.0),
        eta_E=torch.tensor(1.0),
    )
    coeffs = {k: torch.tensor(v) for k, v in RULES[rule].coefficients.items()}
    M = torch.ones(B) if MODES[mode].needs_modulator else None
    for _ in range(10):
        pre = (torch.rand(B, n_pre, generator=gen) < 0.6).float() * 5.0
        post = (torch.rand(B, n_post, generator=gen) < 0.6).float() * 5.0
        state = plasticity_step(rule, mode, state, pre, post, trace_decay=0.9, h_max=h_max, coeffs=coeffs, mod=mod, M=M)
        assert state.H.abs().max() <= h_max
    # the updates were big enough that the bound was actually reached
    assert (state.H.abs() == h_max).any()


def test_bcm_threshold_moves_toward_post_trace_squared():
    # Hold the post trace at 2 (trace_decay 0.5, post activity 1: 0.5 * 2 + 1 = 2), so the
    # threshold target is 4.  With tau_phi = 4: phi_n = 4 - 4 (3/4)^n: 1, 1.75, 2.3125, ...
    state = plastic_initial_state("bcm", "plain", 1, 2, 1, dtype=torch.float64)._replace(post_trace=T([[2.0]]))
    coeffs = {"tau_phi": T(4.0)}
    mod = ModulationParams(eta=T([0.0]))
    phis = []
    for _ in range(3):
        before = state.phi.clone()
        state = plasticity_step(
            "bcm", "plain", state, T([[1.0, 0.0]]), T([[1.0]]), trace_decay=0.5, h_max=1.0, coeffs=coeffs, mod=mod
        )
        assert state.post_trace.item() == 2.0
        # moves by exactly (xpost^2 - phi) / tau_phi
        torch.testing.assert_close(state.phi - before, (4.0 - before) / 4.0)
        phis.append(state.phi.item())
    assert phis == pytest.approx([1.0, 1.75, 2.3125])
    # per post neuron, and per sample: two samples, three post neurons with traces 0, 1, 3 -> targets 0, 1, 9
    state = PlasticState(
        H=torch.zeros(2, 1, 3, dtype=torch.float64),
        pre_trace=torch.zeros(2, 1, dtype=torch.float64),
        post_trace=torch.zeros(2, 3, dtype=torch.float64),
        phi=T([[2.0, 2.0, 2.0], [0.0, 0.0, 0.0]]),
    )
    post = T([[0.0, 1.0, 3.0], [0.0, 1.0, 3.0]])
    new = plasticity_step(
        "bcm", "plain", state, T([[0.0], [0.0]]), post, trace_decay=0.5, h_max=1.0, coeffs=coeffs, mod=mod
    )
    # phi + (target - phi) / 4
    torch.testing.assert_close(new.phi, T([[1.5, 1.75, 3.75], [0.0, 0.25, 2.25]]))


def test_bcm_tau_phi_is_kept_at_least_one():
    # tau_phi = 0.25 would overshoot the target; it is clamped to 1, so phi lands exactly on xpost^2.
    state = PlasticState(
        H=torch.zeros(1, 1, 2), pre_trace=torch.zeros(1, 1), post_trace=torch.zeros(1, 2), phi=T([[1.0, 0.0]]).float()
    )
    new = plasticity_step(
        "bcm",
        "plain",
        state,
        torch.zeros(1, 1),
        torch.tensor([[0.5, 3.0]]),
        trace_decay=0.5,
        h_max=1.0,
        coeffs={"tau_phi": torch.tensor(0.25)},
        mod=ModulationParams(eta=torch.zeros(2)),
    )
    torch.testing.assert_close(new.phi, torch.tensor([[0.25, 9.0]]))


@pytest.mark.parametrize("rule", FAMILIES)
def test_retroactive_changes_H_only_through_E_and_M(rule):
    B, n_pre, n_post = 2, 2, 3
    gen = torch.Generator().manual_seed(3)
    state = plastic_initial_state(rule, "retroactive", B, n_pre, n_post, dtype=torch.float64)
    state = state._replace(
        H=torch.rand(B, n_pre, n_post, generator=gen, dtype=torch.float64) - 0.5,
        pre_trace=torch.rand(B, n_pre, generator=gen, dtype=torch.float64),
        post_trace=torch.rand(B, n_post, generator=gen, dtype=torch.float64),
        E=torch.rand(B, n_pre, n_post, generator=gen, dtype=torch.float64) - 0.5,
        phi=None if state.phi is None else torch.rand(B, n_post, generator=gen, dtype=torch.float64),
    )
    pre, post = T([[1.0, 0.0], [1.0, 1.0]]), T([[0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    kw = dict(
        trace_decay=0.8,
        h_max=10.0,
        coeffs={k: T(v) for k, v in RULES[rule].coefficients.items()},
        mod=ModulationParams(eta_E=T(0.4)),
    )
    # M = 0: the eligibility trace moves, H does not
    new = plasticity_step(rule, "retroactive", state, pre, post, M=T([0.0, 0.0]), **kw)
    assert torch.equal(new.H, state.H)
    assert not torch.equal(new.E, state.E)
    # M != 0: H moves by exactly M * E_new (per sample)
    M = T([0.5, -2.0])
    new = plasticity_step(rule, "retroactive", state, pre, post, M=M, **kw)
    torch.testing.assert_close(new.H - state.H, M.view(B, 1, 1) * new.E)
    # and E_new does not depend on M
    new0 = plasticity_step(rule, "retroactive", state, pre, post, M=T([0.0, 0.0]), **kw)
    assert torch.equal(new.E, new0.E)


@pytest.mark.parametrize("rule", FAMILIES)
def test_eta_E_is_clamped_to_the_unit_interval(rule):
    # eta_E = 1.5 acts as 1 (E <- D) and eta_E = -0.5 as 0 (E kept).
    state = plastic_initial_state(rule, "retroactive", 1, 2, 3, dtype=torch.float64)
    state = state._replace(
        pre_trace=T([[1.0, 2.0]]), post_trace=T([[0.0, 1.0, 2.0]]), E=T([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]])
    )
    kw = dict(trace_decay=0.5, h_max=10.0, coeffs={k: T(v) for k, v in RULES[rule].coefficients.items()}, M=T([0.0]))
    pre, post = T([[1.0, 0.0]]), T([[0.0, 1.0, 1.0]])
    keep = plasticity_step(rule, "retroactive", state, pre, post, mod=ModulationParams(eta_E=T(-0.5)), **kw)
    assert torch.equal(keep.E, state.E)
    replace = plasticity_step(rule, "retroactive", state, pre, post, mod=ModulationParams(eta_E=T(1.5)), **kw)
    unit = plasticity_step(rule, "retroactive", state, pre, post, mod=ModulationParams(eta_E=T(1.0)), **kw)
    torch.testing.assert_close(replace.E, unit.E)
    if rule == "hebbian":  # E = D = xpre xpost^T with xpre = [1.5, 1], xpost = [0, 1.5, 2]
        torch.testing.assert_close(replace.E, T([[[0.0, 2.25, 3.0], [0.0, 1.5, 2.0]]]))


def test_plastic_current_by_hand():
    # pre = [1, 2]; W + alpha ⊙ H = [[1, 0, 1], [0, 1, 1]] + 0.5 [[1, 1, 1], [0, 0, 2]] = [[1.5, 0.5, 1.5], [0, 1, 2]]
    # pre (W + alpha ⊙ H) = [1.5, 2.5, 5.5];  pre W = [1, 2, 3].  Sample 2 has H = 0.
    pre = T([[1.0, 2.0], [1.0, 2.0]])
    W = T([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    alpha = torch.full((2, 3), 0.5, dtype=torch.float64)
    H = T([[[1.0, 1.0, 1.0], [0.0, 0.0, 2.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    torch.testing.assert_close(plastic_current(pre, W, alpha, H), T([[1.5, 2.5, 5.5], [1.0, 2.0, 3.0]]))
    torch.testing.assert_close(plastic_current(pre, W, None, None), T([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]))


def test_modulator_signal_by_hand():
    # tanh(w_M . z + b_M): w_M = [0.5, -0.25], b_M = 0.1
    # z = [1, 2] -> tanh(0.1);  z = [2, 0] -> tanh(1.1)
    M, drive = modulator_signal(T([[1.0, 2.0], [2.0, 0.0]]), T([0.5, -0.25]), T(0.1))
    assert M.shape == (2,) and drive is None
    assert M.tolist() == pytest.approx([math.tanh(0.1), math.tanh(1.1)])


def test_filtered_modulator_by_hand():
    # drives w_M . z + b_M = 0.1 and 1.1 (as above); filter over tau = 4 from zbar = [0.5, -1]:
    # zbar' = zbar + (drive - zbar) / 4 = [0.5 - 0.1, -1 + 0.525] = [0.4, -0.475]
    M, drive = modulator_signal(T([[1.0, 2.0], [2.0, 0.0]]), T([0.5, -0.25]), T(0.1), T([0.5, -1.0]), 4.0)
    assert drive.tolist() == pytest.approx([0.4, -0.475])
    assert M.tolist() == pytest.approx([math.tanh(0.4), math.tanh(-0.475)])
    # a constant drive is reached geometrically: after n steps from 0, (1 - (1 - 1/tau)^n) of it
    zbar = T([0.0])
    for _ in range(3):
        _, zbar = modulator_signal(T([[1.0]]), T([2.0]), T(0.0), zbar, 2.0)
    assert zbar.item() == pytest.approx(2.0 * (1 - 0.5**3))


def test_gated_modulator_by_hand():
    # drives 0.1 and 1.1 (as above), filtered over tau = 4 from zbar = [0.5, -1] to [0.4, -0.475];
    # the gate reads the same features unfiltered: w_G = [1, 1], b_G = -3
    # z = [1, 2] -> sigmoid(0) = 1/2;  z = [2, 0] -> sigmoid(-1)
    z, w_M, b_M, w_G, b_G = T([[1.0, 2.0], [2.0, 0.0]]), T([0.5, -0.25]), T(0.1), T([1.0, 1.0]), T(-3.0)
    M, drive = modulator_signal(z, w_M, b_M, T([0.5, -1.0]), 4.0, w_G, b_G)
    assert drive.tolist() == pytest.approx([0.4, -0.475])  # the filter does not see the gate
    sig = 1.0 / (1.0 + math.exp(1.0))
    assert M.tolist() == pytest.approx([0.5 * math.tanh(0.4), sig * math.tanh(-0.475)])
    M, drive = modulator_signal(z, w_M, b_M, None, 1.0, w_G, b_G)  # unfiltered
    assert drive is None and M.tolist() == pytest.approx([0.5 * math.tanh(0.1), sig * math.tanh(1.1)])
    # a shut gate silences the modulator whatever its drive
    M, _ = modulator_signal(z, w_M, b_M, None, 1.0, w_G, T(-60.0))
    assert M.abs().max() < 1e-20


def test_registries():
    assert {"none", "hebbian", "oja", "bcm", "stdp"} <= set(RULES) == {"none", *FAMILIES}
    assert set(MODES) == set(MODULATIONS)
    assert RULES["none"].update is None
    assert dict(RULES["bcm"].coefficients) == {"tau_phi": 20.0} and RULES["bcm"].has_threshold
    assert set(RULES["stdp"].coefficients) == {"a_plus", "a_minus"}
    assert MODES["retroactive"].has_eligibility and MODES["retroactive"].needs_modulator
    assert MODES["neuromodulated"].needs_modulator and not MODES["plain"].needs_modulator


@pytest.mark.parametrize("lo, hi", [(0.0, 1.0), (1.0, None)])
def test_clamped_coefficients_learn_from_their_bound(lo, hi):
    # the values are clamp's; the gradient passes on the bounds themselves and not beyond them
    points = [lo - 0.5, lo, lo + 0.25] + ([hi, hi + 0.5] if hi is not None else [lo + 7.0])
    x = T(points).requires_grad_()
    y = clamp_coefficient(x, lo, hi)
    assert torch.equal(y.detach(), x.detach().clamp(lo, hi))
    y.backward(torch.ones_like(y))
    assert x.grad.tolist() == ([0.0, 1.0, 1.0, 1.0, 0.0] if hi is not None else [0.0, 1.0, 1.0, 1.0])


def test_the_per_synapse_rule_by_hand():
    # D_ij = A_ij xpre_i xpost_j + B_ij xpre_i + C_ij xpost_j + D_ij, each coefficient its own per synapse
    act = Activity(T([[2.0, 0.5]]), T([[1.0, 3.0]]), T([[1.0, 0.0]]), T([[0.0, 1.0]]))
    c = {
        "A": T([[1.0, 0.0], [2.0, -1.0]]),
        "B": T([[0.5, 0.0], [0.0, 1.0]]),
        "C": T([[0.0, 0.1], [1.0, 0.0]]),
        "D": T([[0.0, 0.0], [0.0, -2.0]]),
    }
    expected = T([[[2.0 + 1.0, 0.3], [1.0 + 1.0, -1.5 + 0.5 - 2.0]]])
    torch.testing.assert_close(RULES["abcd"].update(act, None, None, c), expected)
    # a network's abcd projection holds one coefficient of each kind per synapse, at its initial value
    net = PlasticSNN(NetworkSpec(n_in=3, hidden=4, n_out=2, input=ProjectionSpec(rule="abcd", coefficients={"D": 0.2})))
    coeffs = net.projections["input"].coeffs
    assert {k: tuple(v.shape) for k, v in coeffs.items()} == dict.fromkeys("ABCD", (3, 4))
    assert coeffs["A"].eq(1.0).all() and coeffs["B"].eq(0.0).all() and coeffs["D"].eq(0.2).all()
