"""The fused plastic-synapse kernel against the plain-autograd reference: same forward bits, same
gradients to float32 rounding, for every family x mode on every projection, with the clip active."""

from __future__ import annotations

import copy
import dataclasses
import gc
import itertools
import math
import os
import pickle
import shutil
import weakref

import pytest
import torch

from hybridopt.snn import fused, plasticity
from hybridopt.snn.fused import (
    PlasticTape,
    clip_backward,
    default_interval,
    fused_plastic_current,
    fused_plasticity_step,
)
from hybridopt.snn.network import PROJECTIONS, NetworkSpec, PlasticSNN, ProjectionSpec
from hybridopt.snn.plasticity import (
    MODES,
    RULES,
    Activity,
    ModulationParams,
    PlasticState,
    Rule,
    clip_state,
    plasticity_step,
)
from tests.conftest import FAMILIES, MODULATIONS

COEFFS3 = ("tau_phi", "a_plus", "a_minus")  # the built-in families' coefficients, set by hand below

CASES = list(itertools.product(PROJECTIONS, FAMILIES, MODULATIONS))
IDS = [f"{p}-{r}-{m}" for p, r, m in CASES]

N_IN, N_HIDDEN, N_OUT, STEPS, H_MAX = 6, 16, 3, 120, 0.3
# Large enough learning rates and alpha that H reaches the clip early and often, small enough (with
# trace decay 0.6) that no family's reference gradient blows up over 120 steps (Oja's does at eta 0.5).
PLASTIC = dict(h_max=H_MAX, eta_init=0.3, alpha_init=0.3, eta_E_init=0.3, trace_decay=0.6)
# The per-synapse rule's every term active (its default is plain Hebbian: B = C = D = 0).
ACTIVE = {"abcd": {"B": 0.3, "C": -0.2, "D": 0.05}}


def _spec(kernel: str = "fused", **projections: ProjectionSpec) -> NetworkSpec:
    return NetworkSpec(
        n_in=N_IN, hidden=N_HIDDEN, n_out=N_OUT, input_gain=2.0, recurrent_gain=1.0, kernel=kernel, **projections
    )


def _input(batch: int = 3, steps: int = STEPS, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, steps, N_IN, generator=gen) < 0.3).float()


def _run(net: PlasticSNN, kernel: str, x: torch.Tensor, state=None, **kw):
    """Forward + backward of a loss that reaches outputs, spikes and the final plastic state."""
    net.spec = dataclasses.replace(net.spec, kernel=kernel)
    net.zero_grad(set_to_none=True)
    y, s, final = net(x, state, **kw)
    target = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    loss = (y * target).mean() + s.mean()
    for name in PROJECTIONS:
        st = getattr(final, name)
        if st is not None:
            loss = loss + 0.1 * st.H.square().mean() + (0.1 * st.E.square().mean() if st.E is not None else 0.0)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    return y.detach(), s.detach(), final, grads


def _assert_same_state(a, b):
    for name in PROJECTIONS:
        sa, sb = getattr(a, name), getattr(b, name)
        assert (sa is None) == (sb is None), name
        if sa is None:
            continue
        for field in PlasticState._fields:
            fa, fb = getattr(sa, field), getattr(sb, field)
            assert (fa is None) == (fb is None), (name, field)
            if fa is not None:
                assert torch.equal(fa, fb), (name, field)
    assert torch.equal(a.lif.v, b.lif.v) and torch.equal(a.y, b.y)


def _assert_close_grads(ref: dict, fused: dict):
    assert ref.keys() == fused.keys()
    for name, g in ref.items():
        assert torch.isfinite(g).all(), name
        # float32 rounding, accumulated over 120 steps in a different order
        torch.testing.assert_close(fused[name], g, rtol=1e-4, atol=1e-5 * max(g.abs().max().item(), 1e-3))


# --------------------------------------------------------------------------- every family x mode on every projection
@pytest.mark.parametrize("projection, rule, mode", CASES, ids=IDS)
def test_fused_matches_reference(projection, rule, mode):
    net = PlasticSNN(_spec(**{projection: ProjectionSpec(rule=rule, modulation=mode, **PLASTIC)}), seed=3)
    x = _input()
    y0, s0, st0, g0 = _run(net, "reference", x)
    y1, s1, st1, g1 = _run(net, "fused", x)
    # the example exercises what it should: spikes, a clip that is active, gradients everywhere
    H = getattr(st0, projection).H
    assert 0.02 < s0.mean() < 0.6
    assert (H.abs() == H_MAX).float().mean() > 0.02
    assert all(g.abs().sum() > 0 for g in g0.values())
    # the forward is the same computation: same bits
    assert torch.equal(y1, y0) and torch.equal(s1, s0)
    _assert_same_state(st1, st0)
    _assert_close_grads(g0, g1)


# --------------------------------------------------------------------------- against a float64 reference
F32_GRAD_TOL = 1e-3
"""Float32 gradients (fused kernel) against the float64 reference's, along the same branches:
``|g32 - g64| <= F32_GRAD_TOL * max|g64|`` per parameter (120 steps; seen: at most 5.4e-4)."""

BOUND_ROUNDING = 1e-6
"""A float32 state may take the other branch of the clip than float64 only this close to its bound
(relative to ``h_max``; 8 float32 ulps): float32 absorbs an update below half an ulp into the bound."""


def _record_clips(monkeypatch, forced: list | None = None) -> list:
    """Spy on the reference's clip: record each call's pre-clip ``U``.  With ``forced`` (masks from
    another run, in call order), take those branches instead: the same values, the gradient passed
    where the forced mask says inside."""
    seen: list = []
    real = plasticity.clip_state

    def clip(U, h_max):
        seen.append(U.detach().clone())
        H = real(U, h_max)
        if forced is None:
            return H
        mask = forced[len(seen) - 1].to(U.dtype)
        return H.detach() + (U - U.detach()) * mask  # value H exactly, derivative the forced mask

    monkeypatch.setattr(plasticity, "clip_state", clip)
    return seen


@pytest.mark.parametrize("projection, rule, mode", CASES, ids=IDS)
def test_fused_against_float64_reference(projection, rule, mode, monkeypatch):
    net32 = PlasticSNN(_spec(**{projection: ProjectionSpec(rule=rule, modulation=mode, **PLASTIC)}), seed=3)
    net64 = copy.deepcopy(net32).double()
    x = _input()
    # the kernels are the same maths: in float64 they agree to float64 rounding
    y64, s64, st64, g64 = _run(net64, "reference", x.double())
    y, s, st, gf64 = _run(net64, "fused", x.double())
    assert torch.equal(y, y64) and torch.equal(s, s64)
    for name, g in g64.items():
        torch.testing.assert_close(gf64[name], g, rtol=1e-10, atol=1e-12 * max(g.abs().max().item(), 1e-3))
    # float32 against float64: the same spikes; clip branches that differ only within rounding of a bound
    with monkeypatch.context() as m:
        U64 = _record_clips(m)
        _run(net64, "reference", x.double())
    with monkeypatch.context() as m:
        U32 = _record_clips(m)
        _run(net32, "reference", x)
    y32, s32, st32, g32 = _run(net32, "fused", x)
    assert torch.equal(s32, s64.float())
    assert len(U32) == len(U64) == STEPS
    inside = [(U > -H_MAX) & (U < H_MAX) for U in U32]
    for U_ref, m32 in zip(U64, inside):
        flipped = m32 != ((U_ref > -H_MAX) & (U_ref < H_MAX))
        assert ((U_ref[flipped].abs() - H_MAX).abs() <= BOUND_ROUNDING * H_MAX).all()
    # the float64 reference taken along float32's clip branches: float32's gradients, to float32 accuracy
    with monkeypatch.context() as m:
        _record_clips(m, forced=inside)
        _, _, _, g_along = _run(net64, "reference", x.double())
    for name, g in g_along.items():
        err = (g32[name].double() - g).abs().max().item()
        assert err <= F32_GRAD_TOL * g.abs().max().item(), (name, err / g.abs().max().item())


def test_float32_gradients_match_float64_where_no_state_grazes_its_bound():
    # A network whose plastic states stay well inside their bound: float32 against float64 with
    # nothing forced, every family x mode on every projection at once.
    spec = _spec(
        **{
            p: ProjectionSpec(rule=r, modulation="retroactive", **{**PLASTIC, "h_max": 50.0})
            for p, r in zip(PROJECTIONS, ["hebbian", "oja", "stdp"])
        }
    )
    net32 = PlasticSNN(spec, seed=3)
    net64 = copy.deepcopy(net32).double()
    x = _input()
    _, s64, _, g64 = _run(net64, "reference", x.double())
    _, s32, _, g32 = _run(net32, "fused", x)
    assert torch.equal(s32, s64.float())
    for name, g in g64.items():
        err = (g32[name].double() - g).abs().max().item()
        assert err <= F32_GRAD_TOL * g.abs().max().item(), (name, err / g.abs().max().item())


@pytest.mark.parametrize("rule, mode", list(itertools.product(FAMILIES, MODULATIONS)))
def test_fused_plasticity_gradients_against_finite_differences(rule, mode):
    # With the spikes held fixed the plasticity maths is smooth away from the clip's kink: the fused
    # backward over several steps (current and update, one checkpoint interval of 2) against central
    # differences in float64, with the clip active but no pre-clip state near a bound.
    B, n_pre, n_post, T, h = 2, 3, 4, 6, 0.4
    gen = torch.Generator().manual_seed(22)
    dt = torch.float64
    # the pre neurons always fire, so that no update is exactly zero (STDP's is where neither side
    # spikes): a clipped state would rest on its bound, on the kink
    pre = torch.ones(T, B, n_pre, dtype=dt)
    post = (torch.rand(T, B, n_post, generator=gen) < 0.6).to(dt)
    leaves = {
        "H": (torch.rand(B, n_pre, n_post, generator=gen, dtype=dt) - 0.5) * 0.5,
        "E": (torch.rand(B, n_pre, n_post, generator=gen, dtype=dt) - 0.5) * 0.5,
        "pre_trace": torch.rand(B, n_pre, generator=gen, dtype=dt),
        "post_trace": torch.rand(B, n_post, generator=gen, dtype=dt),
        "phi": torch.rand(B, n_post, generator=gen, dtype=dt),
        "alpha": torch.rand(n_pre, n_post, generator=gen, dtype=dt) + 0.5,
        "eta": torch.rand(n_post, generator=gen, dtype=dt) * 0.6 + 0.2,
        "mod_a": torch.rand(n_post, generator=gen, dtype=dt) - 0.5,
        "mod_b": torch.rand(n_post, generator=gen, dtype=dt) * 0.4 + 0.3,
        "eta_E": torch.tensor(0.55, dtype=dt),
        "M": torch.rand(T, B, generator=gen, dtype=dt) * 1.6 - 0.8,
        # the family's coefficients, away from their initial values (BCM's threshold made fast)
        **{
            c: torch.tensor({"tau_phi": 2.5}.get(c, 1.3 * v - 0.1), dtype=dt)
            for c, v in RULES[rule].coefficients.items()
        },
    }
    if not MODES[mode].has_eligibility:
        del leaves["E"]
    if not RULES[rule].has_threshold:
        del leaves["phi"]
    names = list(leaves)
    W = torch.zeros(n_pre, n_post, dtype=dt)
    seen_U: list = []

    def run(*values):
        lv = dict(zip(names, values))
        st = PlasticState(**{f: lv.get(f) for f in PlasticState._fields})
        tape = PlasticTape(rule, mode, h, st, interval=2)
        coeffs = {k: lv[k] for k in RULES[rule].coefficients}
        mod = ModulationParams(eta=lv["eta"], mod_a=lv["mod_a"], mod_b=lv["mod_b"], eta_E=lv["eta_E"])
        current = 0.0
        for t in range(T):
            current = current + fused_plastic_current(tape, pre[t], W, lv["alpha"], st.H).square().sum()
            M = lv["M"][t] if MODES[mode].needs_modulator else None
            with torch.no_grad():  # the pre-clip state, to check the example stays off the kink
                act, gain = plasticity.plasticity_drive(mode, st, pre[t], post[t], trace_decay=0.7, mod=mod, M=M)
                seen_U.append(plasticity.unclipped_update(rule, mode, act, st.H, st.E, st.phi, coeffs, gain, M)[0])
            st = fused_plasticity_step(tape, st, pre[t], post[t], trace_decay=0.7, coeffs=coeffs, mod=mod, M=M)
        out = [current, st.H]
        return tuple(out + ([st.E] if st.E is not None else []))

    inputs = tuple(leaves[n].clone().requires_grad_() for n in names)
    run(*inputs)
    U = torch.stack(seen_U)
    assert (U.abs() > h).float().mean() > 0.05  # the clip is active
    assert ((U.abs() - h).abs() > 1e-4).all()  # and no state sits near its kink
    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


MIXED = dict(
    input=ProjectionSpec(rule="oja", modulation="neuromodulated", **PLASTIC),
    recurrent=ProjectionSpec(rule="stdp", modulation="retroactive", **PLASTIC),
    readout=ProjectionSpec(rule="bcm", modulation="plain", eta_per_neuron=False, **PLASTIC),
)
ALL_RETRO = {p: ProjectionSpec(rule=r, modulation="retroactive", **PLASTIC) for p, r in zip(PROJECTIONS, FAMILIES)}


@pytest.mark.parametrize("interval", [0, 1, 7, 11, STEPS, 3 * STEPS])
@pytest.mark.parametrize("projections", [MIXED, ALL_RETRO], ids=["mixed", "all-retroactive"])
def test_every_projection_plastic_and_any_checkpoint_interval(projections, interval):
    net = PlasticSNN(_spec(**projections), seed=4)
    x = _input()
    y0, s0, st0, g0 = _run(net, "reference", x)
    y1, s1, st1, g1 = _run(net, "fused", x, checkpoint_interval=interval)
    assert torch.equal(y1, y0) and torch.equal(s1, s0)
    _assert_same_state(st1, st0)
    _assert_close_grads(g0, g1)
    # the interval only decides what is stored and what is recomputed: the same bits either way
    _, _, _, g2 = _run(net, "fused", x)  # the default, ceil(sqrt(T))
    for name in g1:
        assert torch.equal(g1[name], g2[name]), name


def test_gradients_reach_a_given_initial_state_and_chained_sequences():
    # Two sequences back to back, the second starting from the first's final state, and an
    # initial state that itself requires gradients: the tape hands gradients out at its start.
    spec = _spec(**MIXED)
    x1, x2 = _input(seed=1, steps=40), _input(seed=2, steps=50)
    results = {}
    for kernel in ("reference", "fused"):
        net = PlasticSNN(dataclasses.replace(spec, kernel=kernel), seed=5)
        state = net.initial_state(3)
        H0 = (0.1 * torch.randn(state.recurrent.H.shape, generator=torch.Generator().manual_seed(3))).requires_grad_()
        E0 = (0.1 * torch.randn(state.recurrent.E.shape, generator=torch.Generator().manual_seed(4))).requires_grad_()
        state = state._replace(recurrent=state.recurrent._replace(H=H0, E=E0))
        y1, _, mid = net(x1, state, checkpoint_interval=6)
        y2, _, final = net(x2, mid, checkpoint_interval=9)
        loss = y1.square().mean() + y2.square().mean() + final.input.H.square().mean()
        loss.backward()
        results[kernel] = (y2.detach(), H0.grad, E0.grad, {n: p.grad for n, p in net.named_parameters()})
    (y_r, H_r, E_r, g_r), (y_f, H_f, E_f, g_f) = results["reference"], results["fused"]
    assert torch.equal(y_f, y_r)
    assert H_r.abs().sum() > 0 and E_r.abs().sum() > 0
    torch.testing.assert_close(H_f, H_r, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(E_f, E_r, rtol=1e-4, atol=1e-7)
    _assert_close_grads(g_r, g_f)


def test_step_and_no_grad_forward_give_the_fused_forward_values():
    # step() and evaluation under no_grad run the reference maths; training runs fused: same values
    net = PlasticSNN(_spec(**MIXED), seed=6)
    x = _input()
    y, s, final = net(x)
    assert final.input.H.grad_fn is not None
    with torch.no_grad():
        y_ng, s_ng, final_ng = net(x)
        state, params, ys = net.initial_state(x.shape[0]), net.params(), []
        for t in range(x.shape[1]):
            y_t, _, state = net.step(x[:, t], state, params)
            ys.append(y_t)
    assert torch.equal(y_ng, y) and torch.equal(s_ng, s) and torch.equal(torch.stack(ys, 1), y)
    _assert_same_state(final_ng, final)
    _assert_same_state(state, final)


@pytest.mark.parametrize("interval", [0, 4], ids=["store", "recompute"])
def test_retained_graph_gives_the_same_gradients_twice(interval):
    # with every step stored, the first backward gives the stored steps back to the pool; the
    # second recomputes them from the checkpoints
    net = PlasticSNN(_spec(**MIXED), seed=7)
    y, _, _ = net(_input(steps=30), checkpoint_interval=interval)
    loss = y.square().mean()
    loss.backward(retain_graph=True)
    first = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad()
    loss.backward()
    for n, p in net.named_parameters():
        assert torch.equal(p.grad, first[n]), n


# --------------------------------------------------------------------------- memory
def _tapes(fn) -> list[PlasticTape]:
    """The tapes a graph holds (each fused function's ctx carries its projection's tape)."""
    seen, found, stack = set(), [], [fn]
    while stack:
        f = stack.pop()
        if f is None or f in seen:
            continue
        seen.add(f)
        tape = getattr(f, "tape", None)
        if tape is not None and all(tape is not t for t in found):
            found.append(tape)
        stack.extend(n for n, _ in f.next_functions)
    return found


def test_autograd_saves_nothing_of_size_batch_x_pre_x_post():
    B, T = 4, 50
    sizes = {"reference": [], "fused": []}
    for kernel, saved in sizes.items():
        net = PlasticSNN(_spec(kernel, **MIXED), seed=8)
        with torch.autograd.graph.saved_tensors_hooks(lambda t, saved=saved: saved.append(t.numel()) or t, lambda t: t):
            y, _, _ = net(_input(B, T))
        y.sum().backward()
    synapses = B * N_HIDDEN * N_HIDDEN
    assert sum(n >= synapses for n in sizes["reference"]) >= 3 * T  # several per step, per plastic projection
    assert max(sizes["fused"]) < B * N_IN * N_HIDDEN  # only B x N sized tensors (and parameters)


def test_tape_keeps_only_checkpoints_and_dies_with_the_graph():
    net = PlasticSNN(_spec(**MIXED), seed=9)
    y, s, final = net(_input(steps=50), checkpoint_interval=8)
    tapes = _tapes(y.grad_fn)
    assert len(tapes) == 3
    assert all(tape.t == 50 and tape.checkpoints == 1 + 50 // 8 for tape in tapes)  # H_0, H_8, ..., H_48
    refs = [weakref.ref(t) for t in tapes]
    del tapes
    y.square().mean().backward()
    del y, s, final
    # freed by reference counting alone: the tape holds no grad_fn, so there is no cycle
    assert all(r() is None for r in refs)
    gc.collect()


@pytest.mark.parametrize("interval", [0, None], ids=["store", "recompute"])
def test_work_memory_is_reused_and_outputs_are_never_overwritten(interval):
    # a training loop: each sequence borrows the pool's buffers and gives them back, and the final
    # state it returned stays intact while later sequences (and their backward) run
    net = PlasticSNN(_spec(**MIXED), seed=13)
    finals, sizes = [], []
    for i in range(3):
        y, _, final = net(_input(seed=i), checkpoint_interval=interval)
        y.square().mean().backward()
        finals.append((final, [getattr(final, n).H.clone() for n in PROJECTIONS], final.recurrent.E.clone()))
        sizes.append(len(net._pool))
    assert sizes[0] > 0 and sizes[2] == sizes[1] == sizes[0]  # borrowed, given back, borrowed again
    for final, Hs, E in finals:
        assert all(torch.equal(getattr(final, n).H, H) for n, H in zip(PROJECTIONS, Hs))
        assert torch.equal(final.recurrent.E, E)
    # the pool is scratch memory: neither pickled nor copied with the network
    assert "_pool" not in pickle.loads(pickle.dumps(net)).__dict__
    assert "_pool" not in copy.deepcopy(net).__dict__


def test_two_graphs_alive_at_once():
    # two sequences forward before either goes backward: each tape works on its own memory
    net = PlasticSNN(_spec(**MIXED), seed=14)
    x1, x2 = _input(seed=1, steps=40), _input(seed=2, steps=40)
    ref = PlasticSNN(_spec("reference", **MIXED), seed=14)
    expected = []
    for x in (x1, x2):
        ref.zero_grad()
        ref(x)[0].square().mean().backward()
        expected.append({n: p.grad.clone() for n, p in ref.named_parameters()})
    y1, _, _ = net(x1, checkpoint_interval=6)
    y2, _, _ = net(x2, checkpoint_interval=0)
    for y, g in ((y2, expected[1]), (y1, expected[0])):
        net.zero_grad()
        y.square().mean().backward()
        _assert_close_grads(g, {n: p.grad for n, p in net.named_parameters()})


# --------------------------------------------------------------------------- the pieces
@pytest.mark.parametrize("rule, mode", list(itertools.product(FAMILIES, MODULATIONS)))
@pytest.mark.parametrize("gain_shape", ["per-neuron", "scalar"])
def test_in_place_updates_give_the_reference_bits(rule, mode, gain_shape):
    B, n_pre, n_post = 3, 5, 7
    gen = torch.Generator().manual_seed(11)
    r = lambda *shape: torch.rand(*shape, generator=gen) - 0.3  # noqa: E731
    act = Activity(r(B, n_pre), r(B, n_post), (r(B, n_pre) > 0).float(), r(B, n_post))
    H, E, phi, M = r(B, n_pre, n_post), r(B, n_pre, n_post), r(B, n_post), r(B)
    coeffs = {"tau_phi": torch.tensor(3.0), "a_plus": torch.tensor(0.7), "a_minus": torch.tensor(1.3)}
    coeffs.update({c: torch.tensor(1.3 * v - 0.1) for c, v in RULES[rule].coefficients.items() if c not in coeffs})
    n = n_post if gain_shape == "per-neuron" else 1
    mod = ModulationParams(eta=r(n), mod_a=r(n), mod_b=r(n), eta_E=torch.tensor(0.4))
    gain = MODES[mode].gain(mod, M)
    D_ref = RULES[rule].update(act, H, phi, coeffs)
    D = RULES[rule].update_into(act, H, phi, coeffs, torch.empty_like(H), torch.empty_like(H))
    assert torch.equal(D, D_ref)
    U_ref, E_ref = MODES[mode].update(D_ref, H, E, gain, M)
    U, E_new = MODES[mode].update_into(D, H, E, gain, M, torch.empty_like(H))
    assert torch.equal(U, U_ref)
    assert (E_new is None) == (E_ref is None) and (E_new is None or torch.equal(E_new, E_ref))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("h", [0.3, 0.7, 0.5])  # float32(0.3) lies above 0.3, float32(0.7) below, 0.5 is exact
def test_clip_derivative_is_zero_on_the_bound_in_both_kernels(h, dtype):
    # dH/dU = 1 strictly inside (-h, h), 0 on the bound (in U's dtype) and beyond, whatever clamp's
    # own backward does in the installed torch (it passed the gradient on the bound up to 2.13)
    b = torch.tensor(h, dtype=dtype)
    up, down = torch.nextafter(b, torch.tensor(9.0, dtype=dtype)), torch.nextafter(b, torch.tensor(0.0, dtype=dtype))
    U = torch.stack([torch.tensor(0.0, dtype=dtype), b, -b, down, -down, up, -up, 2 * b, -2 * b])
    expected = torch.tensor([1, 0, 0, 1, 1, 0, 0, 0, 0], dtype=dtype)
    g = torch.arange(1.0, U.numel() + 1, dtype=dtype)
    Ur = U.clone().requires_grad_()
    H = clip_state(Ur, h)
    assert torch.equal(H.detach(), U.clamp(-h, h))  # clamp's values, bit for bit
    H.backward(g)
    assert torch.equal(Ur.grad, g * expected)
    assert torch.equal(clip_backward(g, U, h), g * expected)
    out = g.clone()
    assert clip_backward(out, U, h, out=out) is out and torch.equal(out, g * expected)
    with torch.no_grad():
        assert torch.equal(clip_state(Ur, h), U.clamp(-h, h))


@pytest.mark.parametrize("rule, mode", list(itertools.product(FAMILIES, MODULATIONS)))
def test_one_step_at_the_clip_bound(rule, mode):
    # H resting exactly on +-h_max where the update is exactly zero (silent pre and post, zero traces):
    # a saturated state passes no gradient; elsewhere some entries clip and some do not.
    B, n_pre, n_post, h = 2, 3, 4, 0.5
    gen = torch.Generator().manual_seed(12)
    dt = torch.float64
    H = (torch.rand(B, n_pre, n_post, generator=gen, dtype=dt) - 0.5) * 2 * h
    H[:, 0, :] = h
    H[:, 1, 0] = -h
    pre = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]], dtype=dt)
    post = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]], dtype=dt)
    E0 = 2.0 * torch.rand(B, n_pre, n_post, generator=gen, dtype=dt) - 1.0
    E0[:, 0, :] = 0.0  # the eligibility of the silent pre neuron is zero too
    state = PlasticState(
        H=H,
        pre_trace=torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 1.5]], dtype=dt),
        post_trace=torch.tensor([[0.0, 1.0, 2.0, 0.0], [0.0, 0.5, 0.0, 3.0]], dtype=dt),
        E=E0 if MODES[mode].has_eligibility else None,
        phi=torch.rand(B, n_post, generator=gen, dtype=dt) if RULES[rule].has_threshold else None,
    )
    leaves = {
        "pre": pre,
        "post": post,
        **{f"state.{k}": v for k, v in state._asdict().items() if v is not None},
        "eta": torch.full((n_post,), 0.8, dtype=dt),
        "mod_a": torch.linspace(-1, 1, n_post, dtype=dt),
        "mod_b": torch.full((n_post,), 0.5, dtype=dt),
        "eta_E": torch.tensor(0.6, dtype=dt),
        "M": torch.tensor([0.9, -0.7], dtype=dt),
        **{k: torch.tensor(v, dtype=dt) for k, v in {"tau_phi": 2.0, "a_plus": 1.1, "a_minus": 0.9}.items()},
        **{c: torch.tensor(1.3 * v - 0.1, dtype=dt) for c, v in RULES[rule].coefficients.items() if c not in COEFFS3},
    }
    grads, values = {}, {}
    for kernel in ("reference", "fused"):
        lv = {k: v.clone().requires_grad_() for k, v in leaves.items()}
        st = PlasticState(**{f: lv.get(f"state.{f}") for f in PlasticState._fields})
        kw = dict(
            trace_decay=0.5,
            coeffs={k: lv[k] for k in RULES[rule].coefficients},
            mod=ModulationParams(eta=lv["eta"], mod_a=lv["mod_a"], mod_b=lv["mod_b"], eta_E=lv["eta_E"]),
            M=lv["M"] if MODES[mode].needs_modulator else None,
        )
        if kernel == "reference":
            new = plasticity_step(rule, mode, st, lv["pre"], lv["post"], h_max=h, **kw)
        else:
            tape = PlasticTape(rule, mode, h, st, interval=1)
            new = fused_plasticity_step(tape, st, lv["pre"], lv["post"], **kw)
        w = torch.rand(H.shape, generator=torch.Generator().manual_seed(13), dtype=dt)
        loss = (new.H * w).sum() + (new.E.sum() if new.E is not None else 0.0) + new.post_trace.sum()
        loss.backward()
        values[kernel] = new.H.detach()
        grads[kernel] = {k: v.grad for k, v in lv.items()}
    assert torch.equal(values["fused"], values["reference"])
    on_bound = (values["reference"].abs() == h) & (H.abs() == h) & (values["reference"] == H)
    assert on_bound.any() and ((values["reference"].abs() == h) & ~on_bound).any()
    for k, g in grads["reference"].items():
        if g is None:
            assert grads["fused"][k] is None or grads["fused"][k].abs().sum() == 0, k
        else:
            torch.testing.assert_close(grads["fused"][k], g, rtol=1e-12, atol=1e-12, msg=k)
    # nothing passes through a state resting on the bound (but through E, where Oja's D depends on
    # H), and the rest of H does get a gradient
    gH = grads["reference"]["state.H"]
    if not (rule == "oja" and MODES[mode].has_eligibility):
        assert (gH[on_bound] == 0).all()
    assert (gH[~on_bound] != 0).any()


def _anti_hebbian(act, H, phi, coeffs):
    return -(act.pre_trace.unsqueeze(2) * act.post_trace.unsqueeze(1)) * coeffs["k"]


def test_a_family_and_mode_without_vjp_run_fused_by_autograd(monkeypatch):
    # a new family is one function plus one registry line, and it runs fused (by per-step autograd);
    # so does a mode registered without its in-place update and backward
    monkeypatch.setitem(RULES, "anti_hebbian", Rule(_anti_hebbian, {"k": 0.5}))
    bare = MODES["neuromodulated"]._replace(update_into=None, vjp=None)
    monkeypatch.setitem(MODES, "neuromodulated", bare)
    spec = _spec(
        input=ProjectionSpec(rule="anti_hebbian", modulation="plain", **PLASTIC),
        recurrent=ProjectionSpec(rule="oja", modulation="neuromodulated", **PLASTIC),
        readout=ProjectionSpec(rule="anti_hebbian", modulation="retroactive", **PLASTIC),
    )
    net = PlasticSNN(spec, seed=10)
    x = _input(steps=60)
    y0, s0, st0, g0 = _run(net, "reference", x)
    y1, s1, st1, g1 = _run(net, "fused", x, checkpoint_interval=7)
    assert g0["projections.input.coeffs.k"].abs() > 0 and g0["projections.recurrent.mod_a"].abs().sum() > 0
    assert torch.equal(y1, y0) and torch.equal(s1, s0)
    _assert_same_state(st1, st0)
    _assert_close_grads(g0, g1)


# --------------------------------------------------------------------------- configuration
def test_kernel_is_auto_by_default_and_validated():
    assert NetworkSpec(n_in=1, hidden=2, n_out=1).kernel == "auto"
    with pytest.raises(ValueError, match="kernel"):
        NetworkSpec(n_in=1, hidden=2, n_out=1, kernel="compiled-by-hand")
    with pytest.raises(ValueError, match="checkpoint_interval"):
        NetworkSpec(n_in=1, hidden=2, n_out=1, checkpoint_interval=-1)
    zero = PlasticState(torch.zeros(1, 1, 1), torch.zeros(1, 1), torch.zeros(1, 1))
    with pytest.raises(ValueError, match="interval"):
        PlasticTape("hebbian", "plain", 1.0, zero, 0)
    assert [default_interval(t) for t in (1, 2, 4, 5, 100, 101, 200)] == [1, 2, 2, 3, 10, 11, 15]
    assert all(default_interval(t) == math.ceil(math.sqrt(t)) for t in range(1, 500))


# --------------------------------------------------------------------------- the compiled steps
# Inductor builds C++ on CPU: without a compiler the eager kernel runs (tested below), and there is
# nothing compiled to compare.  CI installs one.
needs_cxx = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "g++")) is None, reason="no C++ compiler for torch.compile"
)


@needs_cxx
@pytest.mark.parametrize("interval", [None, 0], ids=["recompute", "store"])
@pytest.mark.parametrize("projections", [MIXED, ALL_RETRO], ids=["mixed", "all-retroactive"])
def test_compiled_matches_reference(projections, interval):
    # every family, every mode and every projection between the two networks, through torch.compile
    net = PlasticSNN(dataclasses.replace(_spec(**projections), compile="always"), seed=4)
    x = _input()
    y0, s0, st0, g0 = _run(net, "reference", x)
    y1, s1, st1, g1 = _run(net, "fused", x, checkpoint_interval=interval)
    assert fused.compile_available() is None  # it really ran compiled, no fallback
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-6)
    assert (s1 != s0).float().mean() <= 1e-3
    for name in PROJECTIONS:
        a, b = getattr(st0, name), getattr(st1, name)
        torch.testing.assert_close(b.H, a.H, rtol=1e-5, atol=1e-6)
    _assert_close_grads(g0, g1)


def test_compile_setting_auto_compiles_only_large_states():
    spec = NetworkSpec(n_in=32, hidden=256, n_out=4, recurrent=ProjectionSpec(rule="oja"))
    assert spec.compile == "auto"
    net = PlasticSNN(spec)
    # B * I * J against the threshold: 16 x 256 x 256 = 2^20 compiles, 15 x 256 x 256 does not
    assert fused.COMPILE_MIN_ELEMENTS == 2**20
    assert net._compiles(16, "recurrent") and not net._compiles(15, "recurrent")
    assert not net._compiles(64, "input")  # 32 x 256 per sample: 2^19 at batch 64
    for setting, expect in (("always", True), ("never", False)):
        net.spec = dataclasses.replace(spec, compile=setting)
        assert net._compiles(1, "recurrent") is expect and net._compiles(10**6, "recurrent") is expect
    with pytest.raises(ValueError, match="compile"):
        NetworkSpec(n_in=1, hidden=2, n_out=1, compile="sometimes")


# Without a C++ compiler: tests/snn/test_compiled.py runs both compiled paths into the failure.


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_fused_matches_reference_on_cuda():
    net = PlasticSNN(_spec(**MIXED), seed=12).cuda()
    x = _input().cuda()
    y0, s0, st0, g0 = _run(net, "reference", x)
    y1, s1, st1, g1 = _run(net, "fused", x)
    torch.testing.assert_close(y1, y0)
    assert torch.equal(s1, s0)
    _assert_close_grads(g0, g1)
