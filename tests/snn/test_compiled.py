"""Whole compiled time steps (``kernel="compiled"``) against the reference maths."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys

import pytest
import torch

from hybridopt.snn import compiled, fused
from hybridopt.snn.network import PROJECTIONS, NetworkSpec, PlasticSNN, ProjectionSpec, StepConstants
from hybridopt.snn.plasticity import MODES, PlasticState
from tests.conftest import FAMILIES

from .test_fused import ACTIVE, H_MAX, PLASTIC, _input, _run, _spec
from .test_positions import _spec as pools_spec

# Inductor builds C++ on CPU; CI installs a compiler.
pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "g++")) is None, reason="no C++ compiler for torch.compile"
)

COMBOS = [(r, m) for r in FAMILIES for m in MODES]
# Network i has COMBOS[i] on the input, COMBOS[i + n] on the recurrent and COMBOS[i + 2n] on the
# readout projection (n = a third of the combinations; COMBOS has families x 3 modes): over the
# networks every family x mode sits on every projection once.
_SHIFT = len(COMBOS) // len(PROJECTIONS)
LATIN = [{p: COMBOS[(i + _SHIFT * k) % len(COMBOS)] for k, p in enumerate(PROJECTIONS)} for i in range(len(COMBOS))]
LATIN_IDS = ["_".join(f"{r}-{m}" for r, m in net.values()) for net in LATIN]


@pytest.mark.parametrize("placement", LATIN, ids=LATIN_IDS)
def test_compiled_matches_reference_for_every_family_mode_and_projection(placement, monkeypatch):
    # one step per compiled call keeps the compile short; the default unrolling is tested below
    monkeypatch.setattr(compiled, "STEPS_PER_CALL", 1)
    specs = {
        p: ProjectionSpec(rule=r, modulation=m, coefficients=ACTIVE.get(r, {}), **PLASTIC)
        for p, (r, m) in placement.items()
    }
    net = PlasticSNN(_spec(**specs), seed=5).double()
    x = _input().double()
    y0, s0, st0, g0 = _run(net, "reference", x)
    y1, s1, st1, g1 = _run(net, "compiled", x)
    assert fused.compile_available() is None  # it really ran compiled, no fallback
    # the example exercises what it should: spikes, active clips, gradients everywhere
    assert 0.02 < s0.mean() < 0.6
    for name in PROJECTIONS:
        assert (getattr(st0, name).H.abs() == H_MAX).float().mean() > 0.01, name  # hundreds of states
    assert all(g.abs().sum() > 0 for g in g0.values())
    # float64: the same spikes, values to rounding, over all STEPS steps
    assert torch.equal(s1, s0)
    torch.testing.assert_close(y1, y0, rtol=1e-10, atol=1e-12)
    for name in PROJECTIONS:
        a, b = getattr(st0, name), getattr(st1, name)
        for field in PlasticState._fields:
            fa, fb = getattr(a, field), getattr(b, field)
            assert (fa is None) == (fb is None), (name, field)
            if fa is not None:  # a fused multiply-add's last bit, grown over 120 steps of BCM's threshold
                torch.testing.assert_close(fb, fa, rtol=1e-10, atol=1e-11)
    assert g0.keys() == g1.keys()
    for name, g in g0.items():
        torch.testing.assert_close(g1[name], g, rtol=1e-8, atol=1e-10 * max(g.abs().max().item(), 1.0))


def test_compiled_float32_on_the_task_size_with_the_default_unrolling():
    # the shipped cue-association network's shape, neuromodulated STDP on input, 240 steps
    spec = NetworkSpec(
        n_in=35, hidden=64, n_out=4, input=ProjectionSpec(rule="stdp", modulation="neuromodulated", h_max=0.1)
    )
    net = PlasticSNN(spec, seed=1)
    gen = torch.Generator().manual_seed(3)
    x = (torch.rand(8, 240, 35, generator=gen) < 0.3).float()
    assert 240 % compiled.STEPS_PER_CALL == 0  # whole calls: one compiled variant
    y0, s0, st0, g0 = _run(net, "reference", x)
    y1, s1, st1, g1 = _run(net, "compiled", x)
    assert (st0.input.H.abs() == 0.1).float().mean() > 0.02  # the clip is active
    assert (s1 != s0).float().mean() <= 1e-3  # float32: a spike may flip on a rounding difference
    torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-4)
    for name, g in g0.items():
        torch.testing.assert_close(g1[name], g, rtol=1e-3, atol=1e-3 * max(g.abs().max().item(), 1e-3))


def test_a_structure_compiles_once_for_every_value_of_its_hyper_parameters():
    filtered = dict(modulation="neuromodulated", modulator_tau=2.0)
    spec = _spec(kernel="compiled", recurrent=ProjectionSpec(rule="oja", **filtered, **PLASTIC))
    x = _input(steps=16)
    before = len(compiled._units)
    outs = []
    for beta, decay, tau in ((0.9, 0.6, 2.0), (0.8, 0.7, 6.0)):
        recurrent = dataclasses.replace(spec.recurrent, trace_decay=decay, modulator_tau=tau)
        other = dataclasses.replace(spec, beta=beta, recurrent=recurrent)
        net = PlasticSNN(other, seed=2)
        y, s, _ = net(x)
        y.sum().backward()
        net.spec = dataclasses.replace(other, kernel="reference")
        with torch.no_grad():
            y_ref, _, _ = net(x)
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)  # each run used its own values
        outs.append(y.detach())
    assert len(compiled._units) == before + 1
    assert not torch.equal(outs[0], outs[1])
    # the floats of a step are graph inputs; h_max bounds B x I x J work and stays a constant
    c = StepConstants.of(spec, like=x)
    assert isinstance(c.beta, torch.Tensor) and c.beta.dim() == 0 and all(isinstance(h, float) for h in c.h_max)
    assert all(isinstance(t, torch.Tensor) and t.dim() == 0 for t in c.modulator_tau)


FALLBACK = """
import sys
import torch
from hybridopt.snn import fused
from hybridopt.snn.network import NetworkSpec, PlasticSNN, ProjectionSpec
x = (torch.rand(3, 30, 4, generator=torch.Generator().manual_seed(0)) < 0.3).float()
out = {}
# compiled time steps, the fused kernel with compiled steps, the eager fused kernel
for kernel, compile_ in zip(sys.argv[1::2], sys.argv[2::2]):
    oja = ProjectionSpec(rule="oja")
    net = PlasticSNN(NetworkSpec(n_in=4, hidden=8, n_out=2, kernel=kernel, compile=compile_, recurrent=oja))
    y, s, _ = net(x)
    y.square().sum().backward()
    out[kernel + compile_] = (y.detach(), net.projections["recurrent"].alpha.grad)
first, *others = out.values()
print("same", all(torch.equal(a, b) for o in others for a, b in zip(first, o)))
print("reason", fused.compile_available())
"""


@pytest.mark.parametrize(
    "order, warning",
    [
        (["compiled", "fusedalways", "fusednever"], "compiled time steps unavailable, using the fused kernel"),
        (["fusedalways", "compiled", "fusednever"], "compiled plastic step unavailable, using the eager fused kernel"),
    ],
    ids=["time-steps-first", "fused-steps-first"],
)
def test_without_a_cxx_compiler_the_eager_fused_kernel_runs_with_one_warning(tmp_path, order, warning):
    # A real failed compilation: no C++ compiler and an empty Inductor cache, in a fresh process.
    env = {**os.environ, "CXX": str(tmp_path / "no-such-g++"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")}
    args = [a for k in order for a in (("compiled", "auto") if k == "compiled" else ("fused", k[5:]))]
    r = subprocess.run([sys.executable, "-c", FALLBACK, *args], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "same True" in r.stdout  # every path gave the eager fused kernel's values
    assert "reason " in r.stdout and "reason None" not in r.stdout
    assert r.stderr.count("UserWarning:") == 1 and r.stderr.count(f"UserWarning: {warning}") == 1


def test_only_a_compile_failure_falls_back_a_wrong_computation_is_raised(monkeypatch):
    from torch._dynamo.exc import TorchRuntimeError
    from torch._inductor.exc import CppCompileError

    from hybridopt.snn import fused_kernels

    assert fused_kernels.is_compile_failure(CppCompileError(["g++"], "error: ..."))
    assert fused_kernels.is_compile_failure(FileNotFoundError("no-such-g++"))
    assert not fused_kernels.is_compile_failure(TorchRuntimeError("shape mismatch while tracing"))
    assert not fused_kernels.is_compile_failure(ValueError("bad value"))
    monkeypatch.setattr(fused_kernels, "_compile_broken", [])
    with pytest.raises(TorchRuntimeError, match="shape mismatch"):
        fused_kernels.mark_compile_broken(TorchRuntimeError("shape mismatch"), "compiled steps unavailable")
    assert fused_kernels.compile_available() is None  # not marked broken: the compiled path stays
    with pytest.warns(UserWarning, match="compiled steps unavailable"):
        fused_kernels.mark_compile_broken(FileNotFoundError("no-such-g++"), "compiled steps unavailable")
    assert "no-such-g++" in fused_kernels.compile_available()


def test_compiled_matches_reference_with_pools_per_position_centred_input_and_normalised_weights(monkeypatch):
    monkeypatch.setattr(compiled, "STEPS_PER_CALL", 4)
    spec = pools_spec(
        winners=2,
        centre_input=True,
        input=ProjectionSpec(rule="hebbian", modulation="neuromodulated", normalise=True, alpha_init=0.5),
        readout=ProjectionSpec(rule="oja", normalise=True),
    )
    net = PlasticSNN(spec, seed=3).double()
    x = (torch.rand(2, 8, 7, generator=torch.Generator().manual_seed(2)) < 0.4).double()
    y0, s0, st0, g0 = _run(net, "reference", x)
    y1, s1, st1, g1 = _run(net, "compiled", x)
    assert fused.compile_available() is None  # it really ran compiled, no fallback
    assert s0.shape == (2, 8, 10) and 0 < s0.mean() and g0.keys() == g1.keys()
    assert torch.equal(s1, s0)
    torch.testing.assert_close(y1, y0, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(st1.input.H, st0.input.H, rtol=1e-10, atol=1e-12)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-8, atol=1e-10)


def test_a_frozen_hidden_layer_is_not_differentiated_and_the_readouts_gradients_are_the_references(monkeypatch):
    """With every parameter upstream of the readout held (``requires_grad`` off, as a frozen
    ``train.freeze`` sets it), the compiled steps make no state of the hidden layer require grad
    (its backward is neither compiled nor run), and the readout's gradients are the reference's,
    on the first sequence and on a later one (the learned pattern set from its first call on)."""
    monkeypatch.setattr(compiled, "STEPS_PER_CALL", 4)
    spec = pools_spec(
        winners=2,
        centre_input=True,
        input=ProjectionSpec(rule="oja", normalise=True, alpha_init=0.5),
        readout=ProjectionSpec(rule="hebbian", modulation="neuromodulated"),
    )
    net = PlasticSNN(spec, seed=3).double()
    held = [p for n, p in net.named_parameters() if not n.startswith(("projections.readout.", "b_out"))]
    assert held and len(held) < len(list(net.parameters()))
    for p in held:
        p.requires_grad_(False)
    x = (torch.rand(2, 12, 7, generator=torch.Generator().manual_seed(2)) < 0.4).double()
    y0, s0, st0, g0 = _run(net, "reference", x)
    for _ in range(2):
        y1, s1, st1, g1 = _run(net, "compiled", x)
        assert fused.compile_available() is None
        assert torch.equal(s1, s0)
        torch.testing.assert_close(y1, y0, rtol=1e-10, atol=1e-12)
        assert not any(t.requires_grad for t in (st1.lif.v, st1.lif.s, st1.input.H, st1.input.pre_trace))
        assert st1.readout.H.requires_grad
        assert g1.keys() == g0.keys() and all(n.startswith(("projections.readout.", "b_out")) for n in g1)
        assert any(g.abs().sum() > 0 for g in g1.values())
        for name in g0:
            torch.testing.assert_close(g1[name], g0[name], rtol=1e-8, atol=1e-10)


def test_a_sequence_without_gradients_of_a_trained_kind_runs_the_training_variant(monkeypatch):
    """Evaluation after training (no gradients, the training's batch size) compiles nothing: it
    runs the training variant, and its outputs and final state are detached and equal the
    reference's.  Another batch size has not trained here and compiles its own (forward-only)."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(compiled, "STEPS_PER_CALL", 2)
    spec = pools_spec(
        winners=1,  # a structure of this test's own: its variants compile here
        centre_input=True,
        input=ProjectionSpec(rule="oja", normalise=True, alpha_init=0.5),
        readout=ProjectionSpec(rule="hebbian", modulation="neuromodulated"),
    )
    net = PlasticSNN(spec, seed=4).double()
    gen = torch.Generator().manual_seed(3)
    x = (torch.rand(3, 6, 7, generator=gen) < 0.4).double()
    _run(net, "compiled", x)  # trains: the grad variant of this kind compiles
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0
    fresh = (torch.rand(3, 6, 7, generator=gen) < 0.4).double()
    with torch.no_grad():
        y, s, st = net(fresh)
    assert counters["stats"]["unique_graphs"] == graphs  # nothing compiled
    assert not y.requires_grad and not s.requires_grad and y.grad_fn is None
    assert not any(t.requires_grad for t in (st.lif.v, st.input.H, st.readout.H, st.readout.pre_trace))
    net.spec = dataclasses.replace(net.spec, kernel="reference")
    with torch.no_grad():
        y0, s0, st0 = net(fresh)
    assert torch.equal(s, s0)
    torch.testing.assert_close(y, y0, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(st.readout.H, st0.readout.H, rtol=1e-10, atol=1e-12)
    net.spec = dataclasses.replace(net.spec, kernel="compiled")
    with torch.no_grad():
        y2, _, _ = net(fresh[:2])  # a batch size that never trained: its own variant
    assert counters["stats"]["unique_graphs"] > graphs
    torch.testing.assert_close(y2, y0[:2], rtol=1e-10, atol=1e-12)
