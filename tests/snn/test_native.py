"""The native sequence kernel (``kernel="native"``, the default on CPU) against the reference maths."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

from hybridopt.snn import compiled, fused, kernels
from hybridopt.snn.kernels import KernelBudget, choose_kernel
from hybridopt.snn.native import NATIVE_RULES, build, unavailable
from hybridopt.snn.network import PROJECTIONS, NetworkSpec, PlasticSNN, ProjectionSpec
from hybridopt.snn.plasticity import MODES, RULES, PlasticState
from tests.conftest import REPO

from .test_compiled import LATIN, LATIN_IDS
from .test_fused import ACTIVE, H_MAX, PLASTIC, _input, _run, _spec

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "c++")) is None and shutil.which("g++") is None,
    reason="no C++ compiler to build the native kernel",
)


def _assert_close_states(a, b, rtol, atol):
    torch.testing.assert_close(b.lif.v, a.lif.v, rtol=rtol, atol=atol)
    torch.testing.assert_close(b.y, a.y, rtol=rtol, atol=atol)
    for name in PROJECTIONS:
        sa, sb = getattr(a, name), getattr(b, name)
        assert (sa is None) == (sb is None), name
        for field in PlasticState._fields if sa is not None else ():
            fa, fb = getattr(sa, field), getattr(sb, field)
            assert (fa is None) == (fb is None), (name, field)
            if fa is not None:
                torch.testing.assert_close(fb, fa, rtol=rtol, atol=atol)


@pytest.mark.parametrize("placement", LATIN, ids=LATIN_IDS)
def test_native_matches_reference_for_every_family_mode_and_projection(placement):
    specs = {
        p: ProjectionSpec(rule=r, modulation=m, coefficients=ACTIVE.get(r, {}), **PLASTIC)
        for p, (r, m) in placement.items()
    }
    net = PlasticSNN(_spec(**specs), seed=5).double()
    x = _input().double()  # 120 steps: 11 chunks of 11, the last one shorter
    native = all(r in NATIVE_RULES for r, _ in placement.values())
    y0, s0, st0, g0 = _run(net, "reference", x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net.spec = dataclasses.replace(net.spec, kernel="native")
        assert (net.kernel_for(x.shape[0]) == "native") == native
        y1, s1, st1, g1 = _run(net, "native", x)
    # a family registered without a native kernel runs on the next best one, and says so
    assert native or any("native kernel asked for but not used" in str(w.message) for w in caught)
    assert 0.02 < s0.mean() < 0.6
    for name in PROJECTIONS:
        assert (getattr(st0, name).H.abs() == H_MAX).float().mean() > 0.01, name  # the clip is active
    assert all(g.abs().sum() > 0 for g in g0.values())
    assert torch.equal(s1, s0)
    # float64, the same operations per element; the sums over a row run in another order, and a
    # plastic readout that feeds back on y (BCM on tanh y after a strongly driven abcd input)
    # amplifies that rounding about a million-fold over the 120 steps: a wrong term is O(1e-3)
    torch.testing.assert_close(y1, y0, rtol=1e-8, atol=1e-9)
    _assert_close_states(st0, st1, 1e-8, 1e-9)
    assert g0.keys() == g1.keys()
    for name, g in g0.items():
        torch.testing.assert_close(g1[name], g, rtol=1e-7, atol=1e-8 * max(g.abs().max().item(), 1.0))


def test_native_continues_from_a_state_and_differentiates_it():
    spec = _spec(
        kernel="reference",
        input=ProjectionSpec(rule="bcm", modulation="retroactive", **PLASTIC),
        recurrent=ProjectionSpec(rule="oja", modulation="neuromodulated", **PLASTIC),
    )
    _continue_and_differentiate(spec, seed=2, extra=lambda final: final.input.phi.sum())


def test_a_filtered_neuromodulator_runs_natively_continues_and_differentiates_its_filter():
    spec = _spec(
        kernel="reference",
        input=ProjectionSpec(rule="stdp", modulation="neuromodulated", modulator_tau=4.0, **PLASTIC),
        recurrent=ProjectionSpec(rule="hebbian", modulation="retroactive", modulator_tau=2.5, **PLASTIC),
    )
    net = PlasticSNN(spec, seed=3).double()
    assert net.initial_state(2).input.drive.shape == (2,)
    start = _continue_and_differentiate(spec, seed=3, extra=lambda final: final.input.drive.square().sum())
    assert start.input.drive.abs().max() > 0.05  # the filter carried a value from the first part
    # the filter changes what the network does, on every kernel alike
    x = _input(steps=40, seed=8).double()
    outs = {}
    for tau in (1.0, 4.0):
        proj = dataclasses.replace(spec.input, modulator_tau=tau)
        for kernel in ("reference", "native", "fused"):
            net.spec = dataclasses.replace(spec, input=proj, kernel=kernel)
            with torch.no_grad():
                outs[tau, kernel] = net(x)[0]
    torch.testing.assert_close(outs[4.0, "native"], outs[4.0, "reference"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(outs[4.0, "fused"], outs[4.0, "reference"], rtol=1e-10, atol=1e-12)
    assert (outs[4.0, "native"] - outs[1.0, "native"]).abs().max() > 1e-3


@pytest.mark.parametrize("tau", [1.0, 3.0], ids=["unfiltered", "filtered"])
def test_a_modulator_that_reads_the_output_is_the_same_on_every_kernel_and_differentiated_through_it(tau):
    spec = dataclasses.replace(
        _spec(
            input=ProjectionSpec(rule="stdp", modulation="neuromodulated", modulator_tau=tau, **PLASTIC),
            recurrent=ProjectionSpec(rule="oja", modulation="retroactive", **PLASTIC),
            readout=ProjectionSpec(rule="hebbian", modulation="neuromodulated", **PLASTIC),
        ),
        modulator_reads_output=True,
    )
    net = PlasticSNN(spec, seed=4).double()
    n_x_s = spec.n_in + spec.hidden
    for name in PROJECTIONS:  # the output's weights start at zero: the network starts as without it
        w = net.projections[name].w_M
        assert w.shape == (n_x_s + spec.n_out,) and torch.equal(w[n_x_s:], torch.zeros(spec.n_out))
        with torch.no_grad():  # here they matter, so that the gradient through y_t is tested
            w[n_x_s:] = torch.linspace(-1.5, 1.5, spec.n_out, dtype=torch.float64)
    x = _input().double()
    y0, s0, st0, g0 = _run(net, "reference", x)
    without = dataclasses.replace(spec, modulator_reads_output=False, kernel="reference")
    other = PlasticSNN(without, seed=4).double()
    other.load_state_dict({k: v[:n_x_s] if k.endswith("w_M") else v for k, v in net.state_dict().items()})
    with torch.no_grad():
        assert (other(x)[0] - y0).abs().max() > 1e-3  # the output's part of the drive changes what it does
    _assert_kernels_match_reference(net, x, (y0, s0, st0, g0), 1e-10, 1e-12, 1e-8, 1e-10)
    assert all(g0[f"projections.{n}.w_M"][n_x_s:].abs().sum() > 0 for n in PROJECTIONS)


def _three_modes(readout: str, projection: dict, **network) -> NetworkSpec:
    """Every projection plastic, one per mode: neuromodulated STDP on the input, retroactive Oja
    on the recurrent, a neuromodulated ``readout`` family; ``projection`` adds to each
    projection's options, ``network`` to the network's."""
    kw = dict(PLASTIC, **projection)
    return dataclasses.replace(
        _spec(
            input=ProjectionSpec(rule="stdp", modulation="neuromodulated", **kw),
            recurrent=ProjectionSpec(rule="oja", modulation="retroactive", **kw),
            readout=ProjectionSpec(rule=readout, modulation="neuromodulated", **kw),
        ),
        **network,
    )


@pytest.mark.parametrize(("tau", "reads_output"), [(1.0, False), (3.0, True)], ids=["unfiltered", "filtered-reads-y"])
def test_a_gated_modulator_is_the_same_on_every_kernel_and_differentiated_through_its_gate(tau, reads_output):
    spec = _three_modes("abcd", dict(modulator_gate=True, modulator_tau=tau), modulator_reads_output=reads_output)
    net = PlasticSNN(spec, seed=4).double()
    n_features = spec.n_in + spec.hidden + (spec.n_out if reads_output else 0)
    gen = torch.Generator().manual_seed(9)
    for name in PROJECTIONS:  # the gate starts at 1/2 everywhere; here it must vary to be tested
        proj = net.projections[name]
        assert torch.equal(proj.w_G, torch.zeros(n_features, dtype=torch.float64)) and proj.b_G.item() == 0.0
        with torch.no_grad():
            proj.w_G.copy_(torch.randn(n_features, generator=gen, dtype=torch.float64) * 1.5)
            proj.b_G.fill_(0.5)
            if reads_output:
                proj.w_M[spec.n_in + spec.hidden :] = 0.7
    x = _input().double()
    y0, s0, st0, g0 = _run(net, "reference", x)
    ungated = PlasticSNN(
        dataclasses.replace(
            spec,
            kernel="reference",
            **{n: dataclasses.replace(spec.projection(n), modulator_gate=False) for n in PROJECTIONS},
        ),
        seed=4,
    ).double()
    ungated.load_state_dict({k: v for k, v in net.state_dict().items() if not k.endswith(("w_G", "b_G"))})
    with torch.no_grad():
        assert (ungated(x)[0] - y0).abs().max() > 1e-3  # the gate changes what the network does
    _assert_kernels_match_reference(net, x, (y0, s0, st0, g0), 1e-8, 1e-9, 1e-7, 1e-8)
    for name in PROJECTIONS:
        assert g0[f"projections.{name}.w_G"].abs().sum() > 0 and g0[f"projections.{name}.b_G"].abs() > 0
        if reads_output:  # the gate's part on y_t is differentiated too
            assert g0[f"projections.{name}.w_G"][spec.n_in + spec.hidden :].abs().sum() > 0


@pytest.mark.parametrize("reset", ["zero", "subtract"])
def test_k_winners_bind_and_are_the_same_on_every_kernel(reset, monkeypatch):
    spec = _three_modes("hebbian", {}, reset=reset, winners=2)
    net = PlasticSNN(spec, seed=4).double()
    x = _input().double()
    y0, s0, st0, g0 = _run(net, "reference", x)
    assert s0.sum(-1).max() == 2  # at most k units spike per step, and k do
    free = PlasticSNN(dataclasses.replace(spec, winners=0, kernel="reference"), seed=4).double()
    with torch.no_grad():
        assert free(x)[1].sum(-1).max() > 4  # without the competition more units spike: it binds
    _assert_kernels_match_reference(net, x, (y0, s0, st0, g0), 1e-8, 1e-9, 1e-7, 1e-8)
    if reset == "subtract":
        return  # one compile is enough: the compiled unit runs the reference's own step
    monkeypatch.setattr(compiled, "STEPS_PER_CALL", 4)  # a short compile; the same maths
    y1, s1, _, g1 = _run(net, "compiled", x)
    assert fused.compile_available() is None  # it really ran compiled
    assert torch.equal(s1, s0)
    torch.testing.assert_close(y1, y0, rtol=1e-10, atol=1e-12)
    for name, g in g0.items():
        torch.testing.assert_close(g1[name], g, rtol=1e-8, atol=1e-10 * max(g.abs().max().item(), 1.0))


def _assert_kernels_match_reference(net, x, reference, rtol, atol, grad_rtol, grad_atol):
    """The native and fused kernels give ``reference`` (``_run``'s outputs on the reference
    kernel): the same spikes, outputs and states within ``rtol``/``atol``, every gradient within
    ``grad_rtol`` and ``grad_atol`` times its largest magnitude (at least 1)."""
    y0, s0, st0, g0 = reference
    for kernel in ("native", "fused"):
        y1, s1, st1, g1 = _run(net, kernel, x)
        assert torch.equal(s1, s0), kernel
        torch.testing.assert_close(y1, y0, rtol=rtol, atol=atol)
        _assert_close_states(st0, st1, rtol, atol)
        assert g0.keys() == g1.keys()
        for name, g in g0.items():
            torch.testing.assert_close(g1[name], g, rtol=grad_rtol, atol=grad_atol * max(g.abs().max().item(), 1.0))


def _continue_and_differentiate(spec, seed, extra):
    """Run 37 steps, then 23 more from that state on the reference and the native kernel: the
    outputs' gradients on every tensor of the state agree.  Returns the middle state."""
    net = PlasticSNN(spec, seed=seed).double()
    with torch.no_grad():
        _, _, mid = net(_input(steps=37, seed=4).double())  # a state worth continuing from

    def leaves():
        def req(t):
            if t is None or isinstance(t, torch.Tensor):
                return None if t is None else t.detach().clone().requires_grad_()
            return type(t)(*(req(u) for u in t))

        return req(mid)

    grads = []
    for kernel in ("reference", "native"):
        net.spec = dataclasses.replace(net.spec, kernel=kernel)
        start = leaves()
        y, s, final = net(_input(steps=23, seed=6).double(), start)
        loss = y.square().sum() + s.sum() + extra(final) + final.recurrent.H.square().sum()
        flat = [t for t in (start.lif.v, start.lif.s, start.y, *start.input, *start.recurrent) if t is not None]
        grads.append(torch.autograd.grad(loss, flat, allow_unused=True))
    assert len(grads[0]) == len(grads[1])
    for a, b in zip(*grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-10)
    return mid


def test_native_float32_at_the_task_size_twice_backward_and_without_gradients():
    spec = NetworkSpec(
        n_in=35, hidden=64, n_out=4, input=ProjectionSpec(rule="stdp", modulation="neuromodulated", h_max=0.1)
    )
    net = PlasticSNN(spec, seed=1)
    assert net.kernel_for(8) == "native"
    x = (torch.rand(8, 240, 35, generator=torch.Generator().manual_seed(3)) < 0.3).float()
    y0, s0, st0, g0 = _run(net, "reference", x)
    net.spec = spec
    y, s, st = net(x)
    assert (st0.input.H.abs() == 0.1).float().mean() > 0.02
    assert (s != s0).float().mean() <= 1e-3  # float32: a spike may flip on a rounding difference
    torch.testing.assert_close(y.detach(), y0, rtol=1e-4, atol=1e-4)
    loss = (y * torch.randn(y.shape, generator=torch.Generator().manual_seed(1))).mean() + s.mean()
    loss = loss + 0.1 * st.input.H.square().mean()
    first = torch.autograd.grad(loss, list(net.parameters()), retain_graph=True)
    second = torch.autograd.grad(loss, list(net.parameters()))  # the tape is still there
    for (name, _), a, b in zip(net.named_parameters(), first, second):
        assert torch.equal(a, b), name
        torch.testing.assert_close(a, g0[name], rtol=1e-3, atol=1e-3 * max(g0[name].abs().max().item(), 1e-3))
    with torch.no_grad():
        y2, s2, _ = net(x)
    assert torch.equal(y2, y.detach()) and torch.equal(s2, s.detach())


def test_native_dense_weight_gradients_with_real_valued_inputs_and_silent_rows():
    # the dense weights' gradients are summed over the non-zero rows of their inputs only: with
    # real-valued inputs (a policy's observations), exact zeros and whole silent steps mixed in,
    # they are still the full products sum_t a_t^T g_t
    spec = _spec(input=ProjectionSpec(rule="hebbian", modulation="neuromodulated", **PLASTIC))
    net = PlasticSNN(spec, seed=4).double()
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(3, 60, spec.n_in, generator=gen, dtype=torch.float64) * 1.5
    x = x * (torch.rand(x.shape, generator=gen) < 0.5)  # half the entries exactly zero
    x[:, 10:20] = 0.0  # and ten silent steps
    _, _, _, g_ref = _run(net, "reference", x)
    _, _, _, g_nat = _run(net, "native", x)
    for name in ("input.W", "recurrent.W", "readout.W", "b_hidden", "b_out"):
        ref = g_ref[next(k for k in g_ref if k.endswith(name))]
        got = g_nat[next(k for k in g_nat if k.endswith(name))]
        assert ref.abs().max() > 0, name
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-11 * max(ref.abs().max().item(), 1.0))


def test_native_work_memory_is_reused_from_one_step_to_the_next():
    # every tensor a sequence borrows goes back to the network's pool when its graph dies: a
    # training loop reuses the same few buffers (fresh memory is faulted in page by page)
    spec = NetworkSpec(n_in=35, hidden=32, n_out=4, input=ProjectionSpec(rule="hebbian", modulation="retroactive"))
    net = PlasticSNN(spec, seed=0)
    x = (torch.rand(4, 50, 35, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    sizes = []
    for _ in range(6):
        y, s, _ = net(x)
        (y.sum() + s.sum()).backward()
        sizes.append(len(net._pool))
    assert sizes[2] > 0 and len(set(sizes[2:])) == 1, sizes


def test_the_kernel_choice():
    plastic = _spec(kernel="auto", input=ProjectionSpec(rule="stdp", modulation="neuromodulated"))
    cpu, f32 = torch.device("cpu"), torch.float32
    long_run, short_run = KernelBudget(steps=10**5, cpu_s=7200.0), KernelBudget(steps=10**5, cpu_s=180.0)
    assert choose_kernel(plastic, batch=32, grad=True, device=torch.device("cuda"), dtype=f32) == "fused"  # no budget
    # auto: native on the CPU whatever the budget (nothing to compile per genome)
    for budget in (None, long_run, short_run):
        assert choose_kernel(plastic, batch=32, grad=True, device=cpu, dtype=f32, budget=budget) == "native"
        assert choose_kernel(plastic, batch=32, grad=False, device=cpu, dtype=f32, budget=budget) == "native"
    # where native cannot run: whole compiled steps only when the budget pays the compile
    gpu = torch.device("cuda")
    assert choose_kernel(plastic, batch=32, grad=True, device=gpu, dtype=f32, budget=long_run) == "compiled"
    assert choose_kernel(plastic, batch=32, grad=True, device=gpu, dtype=f32, budget=short_run) == "fused"
    assert choose_kernel(plastic, batch=32, grad=True, device=cpu, dtype=torch.float16, budget=long_run) == "compiled"
    assert choose_kernel(plastic, batch=32, grad=False, device=gpu, dtype=f32, budget=short_run) == "reference"
    big = _spec(kernel="auto", recurrent=ProjectionSpec(rule="hebbian"))
    big = dataclasses.replace(big, hidden=256)
    assert choose_kernel(big, batch=16, grad=True, device=gpu, dtype=f32, budget=long_run) == "fused"  # memory
    # one step at a time (a policy in its environment): compiled only for a long run
    for budget, want in ((long_run, "compiled"), (short_run, "reference")):
        got = choose_kernel(plastic, batch=1, grad=False, device=cpu, dtype=f32, budget=budget, single_step=True)
        assert got == want
    # an explicit choice is kept
    for k in ("compiled", "fused", "reference"):
        spec = _spec(kernel=k, input=ProjectionSpec(rule="hebbian"))
        assert choose_kernel(spec, batch=32, grad=True, device=cpu, dtype=f32, budget=short_run) == k
    # a plugin family: the next best kernel, said once
    plugin = _spec(kernel="auto", input=ProjectionSpec(rule="anti_hebbian"))
    kernels._warned.clear()
    with pytest.warns(UserWarning, match="anti_hebbian/plain has no native kernel"):
        assert choose_kernel(plugin, batch=32, grad=True, device=cpu, dtype=f32, budget=short_run) == "fused"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        choose_kernel(plugin, batch=32, grad=True, device=cpu, dtype=f32, budget=short_run)


BUILD = """
import dataclasses, json, sys, torch, warnings
from hybridopt.snn.native import build
from hybridopt.snn.network import NetworkSpec, PlasticSNN, ProjectionSpec
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    net = PlasticSNN(NetworkSpec(n_in=5, hidden=8, n_out=2, input=ProjectionSpec(rule="hebbian")), seed=0)
    x = (torch.rand(2, 30, 5, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    kernel = net.kernel_for(2)
    y, s, _ = net(x)
    net.spec = dataclasses.replace(net.spec, kernel="reference")
    y0, s0, _ = net(x)
print(json.dumps({"kernel": kernel, "build_s": build.build_cpu_seconds(), "same": bool(torch.allclose(y, y0)),
                  "warnings": [str(w.message) for w in caught]}))
"""


def _env(tmp_path, **env):
    return {**os.environ, "PYTHONPATH": str(REPO), "HYBRIDOPT_CACHE": str(tmp_path / "cache"), **env}


def _result(out: subprocess.CompletedProcess) -> dict:
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _run_build(tmp_path, **env):
    full = _env(tmp_path, **env)
    return _result(subprocess.run([sys.executable, "-c", BUILD], env=full, capture_output=True, text=True, timeout=300))


def test_built_once_per_machine_then_loaded_from_the_cache(tmp_path):
    # Two processes start at once on an empty cache (the workers of a first search): the compiler
    # (a wrapper that notes every build) runs once, and both train on the native kernel.
    log = tmp_path / "builds.log"
    cxx = tmp_path / "cxx"
    real = shutil.which(os.environ.get("CXX") or "c++") or shutil.which("g++")
    cxx.write_text(f'#!/bin/sh\ncase " $* " in *" -o "*) echo build >> "{log}";; esac\nexec "{real}" "$@"\n')
    cxx.chmod(0o755)
    env = _env(tmp_path, CXX=str(cxx))
    procs = [subprocess.Popen([sys.executable, "-c", BUILD], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    firsts = [_result(subprocess.CompletedProcess(p.args, p.returncode, *o)) for p, o in zip(procs, outs)]
    assert log.read_text().split() == ["build"]  # one build, not one per process
    assert all(f["kernel"] == "native" and f["same"] for f in firsts)
    assert sorted(f["build_s"] > 0.05 for f in firsts) == [False, True]  # the builder paid, the waiter did not
    (lib,) = (tmp_path / "cache" / "native").glob("*.so")
    built = lib.stat().st_mtime_ns
    again = _run_build(tmp_path, CXX=str(cxx))
    assert again["kernel"] == "native" and again["same"]
    assert again["build_s"] < 0.05 and lib.stat().st_mtime_ns == built  # loaded, not rebuilt
    assert log.read_text().split() == ["build"]
    assert not [w for w in again["warnings"] if "native" in w]


def test_without_a_compiler_the_network_runs_on_another_kernel_and_says_why(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    out = _run_build(tmp_path, PATH=str(empty), CXX="")
    assert out["kernel"] != "native" and out["same"]
    assert any("native sequence kernel unavailable" in w and "no C++ compiler" in w for w in out["warnings"])


def test_the_library_name_follows_the_source(tmp_path, monkeypatch):
    compiler = build._compiler()
    assert compiler is not None and unavailable() is None
    a = build.library_path(compiler)
    src = tmp_path / "sequence.cpp"
    src.write_text(build.SOURCE.read_text() + "\n// changed\n")
    monkeypatch.setattr(build, "SOURCE", src)
    assert build.library_path(compiler) != a  # an edited kernel is a new library, not a stale one


def test_the_native_kernel_knows_the_built_in_families_and_modes_by_their_registered_names():
    # the kernel's codes name the registry's own entries: a renamed or replaced family would run
    # maths the kernel does not have
    from hybridopt.snn import rules
    from hybridopt.snn.native import NATIVE_MODES

    for name in NATIVE_RULES:
        assert RULES[name].update is getattr(rules, f"{name}_update"), name
    assert set(NATIVE_MODES) == set(MODES)
