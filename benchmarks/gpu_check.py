"""The fused kernel and the compiled time steps on a CUDA device: exactness against the reference, then timing.

Part 1, exactness: every family x mode on the recurrent projection (and one network with all three
projections plastic, every mode), ``B=8, N=64, T=120`` with the clip active: readout and spikes
equal, final ``H`` equal, every parameter's gradient within float32 tolerance of the reference's;
each also with the steps through ``torch.compile`` (``compile="always"``: Triton on CUDA), and
with whole time steps compiled (``kernel="compiled"``, the default at small sizes).
Part 2, timing: ``(B, N, T) = (32, 256, 200)``, Oja / plain on the recurrent projection, reference
vs fused (compiled, as ``compile="auto"`` does at this size; eager; and storing every step) vs
whole compiled time steps; and the same at the cue-association size ``--small`` (32, 64, 240):
median ms of forward + backward over 5 runs after a warm-up
(``torch.cuda.synchronize`` around each), and peak allocated device memory.

One JSON object per line, then a summary; exit status 1 if any exactness check fails.

    python -m benchmarks.gpu_check            # from the repo root; about a minute on one GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import sys
import time

import torch

from hybridopt.snn.network import PROJECTIONS, NetworkSpec, PlasticSNN, ProjectionSpec

FAMILIES = ("hebbian", "oja", "bcm", "stdp")
MODES = ("plain", "neuromodulated", "retroactive")
PLASTIC = dict(h_max=0.3, eta_init=0.3, alpha_init=0.3, eta_E_init=0.3, trace_decay=0.6)


def run(net: PlasticSNN, kernel: str, x: torch.Tensor, interval=None, compile_: str = "never"):
    net.spec = dataclasses.replace(net.spec, kernel=kernel, compile=compile_)
    net.zero_grad(set_to_none=True)
    y, s, final = net(x, checkpoint_interval=interval)
    target = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y.device)
    loss = (y * target).mean() + s.mean()
    for name in PROJECTIONS:
        st = getattr(final, name)
        if st is not None:
            loss = loss + 0.1 * st.H.square().mean()
    loss.backward()
    return y.detach(), s.detach(), final, {n: p.grad.detach().clone() for n, p in net.named_parameters()}


def exactness(device: torch.device, B: int, N: int, T: int) -> list[dict]:
    cases = [({"recurrent": ProjectionSpec(rule=r, modulation=m, **PLASTIC)}, f"recurrent-{r}-{m}")
             for r, m in itertools.product(FAMILIES, MODES)]  # fmt: skip
    every = {p: ProjectionSpec(rule=r, modulation=m, **PLASTIC) for p, r, m in zip(PROJECTIONS, FAMILIES, MODES)}
    cases.append((every, "all-projections"))
    rows = []
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(B, T, 6, generator=gen) < 0.3).float().to(device)
    for projections, label in cases:
        spec = NetworkSpec(n_in=6, hidden=N, n_out=3, input_gain=2.0, recurrent_gain=1.0, **projections)
        net = PlasticSNN(spec, seed=3).to(device)
        y0, s0, st0, g0 = run(net, "reference", x)
        row = {"check": label}
        for kernel, interval, tag, compile_ in (
            ("fused", None, "recompute", "never"),
            ("fused", 0, "store", "never"),
            ("fused", None, "compiled", "always"),
            ("compiled", None, "steps", "never"),
        ):
            y1, s1, st1, g1 = run(net, kernel, x, interval, compile_)
            rel = max(((g1[n] - g).abs().max() / g.abs().max().clamp(min=1e-12)).item() for n, g in g0.items())
            same_H = all(
                torch.equal(getattr(st0, n).H, getattr(st1, n).H) for n in PROJECTIONS if getattr(st0, n) is not None
            )
            compiled = tag in ("compiled", "steps")
            # compiled code may round differently (fused multiply-adds): allow a rare flipped spike there
            flips = (s0 != s1).float().mean().item()
            ok = flips <= (1e-3 if compiled else 0.0) and torch.allclose(
                y0, y1, rtol=1e-5, atol=1e-4 if compiled else 1e-6
            )
            ok = ok and rel < 1e-3
            row[tag] = {
                "y_equal": torch.equal(y0, y1),
                "y_max_abs_diff": (y0 - y1).abs().max().item(),
                "s_equal": torch.equal(s0, s1),
                "H_equal": same_H,
                "grad_max_rel_err": rel,
                "ok": ok,
            }
        row["ok"] = all(row[t]["ok"] for t in ("recompute", "store", "compiled", "steps"))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _time_once(net: PlasticSNN, x: torch.Tensor, interval, device: torch.device) -> float:
    net.zero_grad(set_to_none=True)
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    y, _, _ = net(x, checkpoint_interval=interval)
    y.square().mean().backward()
    torch.cuda.synchronize(device)
    return time.perf_counter() - start


def timing(device: torch.device, B: int, N: int, T: int, repeats: int) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(B, T, 32, generator=gen) < 0.2).float().to(device)
    rows = []
    variants = (
        ("reference", "reference", None, "never"),
        ("fused", "fused", None, "always"),
        ("fused-eager", "fused", None, "never"),
        ("fused-store", "fused", 0, "never"),
        ("steps", "compiled", None, "never"),
    )
    for variant, kernel, interval, compile_ in variants:
        spec = NetworkSpec(
            n_in=32, hidden=N, n_out=4, input_gain=2.0, recurrent_gain=1.0, kernel=kernel, compile=compile_,
            recurrent=ProjectionSpec(rule="oja"),
        )  # fmt: skip
        net = PlasticSNN(spec, seed=0).to(device)
        _time_once(net, x, interval, device)  # warm-up (compiles)
        torch.cuda.reset_peak_memory_stats(device)
        ms = 1e3 * statistics.median(_time_once(net, x, interval, device) for _ in range(repeats))
        row = {"B": B, "N": N, "T": T, "variant": variant, "ms": ms}
        row["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        rows.append(row)
        print(json.dumps(row), flush=True)
        del net
        torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="32,256,200", help="B,N,T for the timing")
    parser.add_argument("--small", default="32,64,240", help="B,N,T for a second timing at the tasks' size")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        sys.exit(2)
    device = torch.device("cuda")
    print(f"# {torch.cuda.get_device_name(device)}, torch {torch.__version__}", flush=True)
    checks = exactness(device, B=8, N=64, T=120)
    B, N, T = (int(v) for v in args.size.split(","))
    sizes = [(B, N, T), tuple(int(v) for v in args.small.split(","))]
    times = {size: timing(device, *size, args.repeats) for size in sizes}
    print()
    print(f"exactness: {sum(r['ok'] for r in checks)}/{len(checks)} configurations ok")
    for size, rows in times.items():
        ref = next(r for r in rows if r["variant"] == "reference")
        print(f"B, N, T = {size}")
        for r in rows:
            print(
                f"{r['variant']:<12} {r['ms']:9.1f} ms  x{ref['ms'] / r['ms']:5.2f} vs reference   "
                f"peak {r['peak_mem_mb']:8.0f} MB  ({r['peak_mem_mb'] / ref['peak_mem_mb']:.2f} of reference)"
            )
    sys.exit(0 if all(r["ok"] for r in checks) else 1)


if __name__ == "__main__":
    main()
