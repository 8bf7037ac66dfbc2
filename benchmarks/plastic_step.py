"""Fused plastic-synapse kernel vs plain autograd vs a static network, against the memory-bandwidth bound.

For each size ``(B, N, T)`` and each variant -- ``static`` (no plasticity), ``reference`` (a
plastic recurrent projection, plain autograd) and ``fused`` (the same network through
:mod:`hybridopt.snn.fused`, as training runs it: ``compile="auto"``, so through
``torch.compile`` from ``B * N * N >= 2^20`` on; the first call, which compiles, is the warm-up;
add the variant ``fused-eager`` for the fused kernel with ``torch.compile`` off) -- a fresh
subprocess builds a :class:`PlasticSNN` (``N`` hidden LIF neurons, 32 Poisson input channels at
p = 0.2, 4 outputs; Oja / plain on the recurrent projection unless told otherwise), runs one
warm-up and then 5 timed forward + backward passes over a ``B x T`` batch, and reports the
median wall time, the median CPU time of the process and its peak resident memory
(``ru_maxrss``: everything the process touched, the interpreter and torch included).

The lower bound assumes the ideal plastic step touches the ``B x N x N`` state 9 times per
time step (forward and backward together) at the machine's single-core copy bandwidth::

    bound_ms = 9 * B * N^2 * 4 bytes * T / bandwidth

where ``bandwidth`` counts bytes read plus bytes written by a single-threaded copy of a
256 MiB float32 tensor (best of 10, measured here in a subprocess of its own), so one "pass" is
one read or one write of the plastic state.  The ``static`` and ``reference`` rows carry the
same bound, for comparison.

Output: one JSON object per line, keys ``B, N, T, variant, ms, peak_rss_mb, bound_ms`` (plus
``cpu_ms``), then a table of fused / reference speed-up, fused / bound and the memory ratio.

    python -m benchmarks.plastic_step --quick       # (32, 64, 100) only (from the repo root)
    python -m benchmarks.plastic_step               # all three sizes; the reference at
                                                    # (32, 256, 200) needs about 10 GB

Timings on a shared machine: the CPU time is less sensitive to other processes than the wall
time, but both rise when others compete for memory bandwidth and the last-level cache.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SIZES = [(32, 64, 100), (64, 128, 100), (32, 256, 200)]
VARIANTS = ("static", "reference", "fused")
EXTRA_VARIANTS = ("fused-eager",)  # the fused kernel with torch.compile off, on request
PASSES = 9
N_IN, N_OUT, RATE = 32, 4, 0.2
REPO = Path(__file__).resolve().parent.parent


def measure_bandwidth(mib: int = 256, repeats: int = 10) -> float:
    """Single-thread copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    import torch

    torch.set_num_threads(1)
    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best


def run_worker(B: int, N: int, T: int, variant: str, args: argparse.Namespace) -> dict:
    """One configuration, in this (fresh) process: median ms of forward + backward, peak RSS."""
    import torch

    from hybridopt.snn.network import NetworkSpec, PlasticSNN, ProjectionSpec

    torch.set_num_threads(args.threads)
    plastic = {} if variant == "static" else {args.projection: ProjectionSpec(rule=args.rule, modulation=args.mode)}
    kernel = "reference" if variant == "reference" else "fused"
    compile_ = "never" if variant == "fused-eager" else "auto"
    spec = NetworkSpec(
        n_in=N_IN, hidden=N, n_out=N_OUT, input_gain=2.0, recurrent_gain=1.0, kernel=kernel, compile=compile_,
        checkpoint_interval=args.checkpoint_interval, **plastic,
    )  # fmt: skip
    net = PlasticSNN(spec, seed=args.seed)
    x = (torch.rand(B, T, N_IN, generator=torch.Generator().manual_seed(args.seed)) < RATE).float()

    def once() -> tuple[float, float, float]:
        net.zero_grad(set_to_none=True)
        wall, cpu = time.perf_counter(), time.process_time()
        y, s, _ = net(x)
        y.square().mean().backward()
        return time.perf_counter() - wall, time.process_time() - cpu, s.mean().item()

    for _ in range(args.warmup):
        once()
    runs = [once() for _ in range(args.repeats)]
    return {
        "ms": 1e3 * statistics.median(r[0] for r in runs),
        "cpu_ms": 1e3 * statistics.median(r[1] for r in runs),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "spike_rate": runs[-1][2],
    }


def run_json(module: str, argv: list[str], timeout: float, env: dict | None = None) -> dict:
    """``python -m module *argv`` in a fresh single-threaded process; its last stdout line as JSON,
    or ``{"error": ...}`` when it failed or timed out."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
    try:
        out = subprocess.run(
            [sys.executable, "-m", module, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
        return {"error": f"exit status {out.returncode}: {tail}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _child(argv: list[str], timeout: float) -> dict:
    return run_json("benchmarks.plastic_step", argv, timeout)


def _ratio(a, b) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def summary(rows: list[dict]) -> str:
    header = (
        f"{'B':>4} {'N':>5} {'T':>5} | {'static ms':>10} {'ref ms':>10} {'fused ms':>10} {'eager ms':>9} "
        f"{'bound ms':>9} | {'ref/fused':>9} {'fused/bound':>11} | {'ref MB':>8} {'fused MB':>8} {'fused/ref mem':>13}"
    )
    lines = [header, "-" * len(header)]

    def fmt(v, spec: str) -> str:
        return format(v, spec) if v is not None else "-"

    for B, N, T in dict.fromkeys((r["B"], r["N"], r["T"]) for r in rows):
        by = {r["variant"]: r for r in rows if (r["B"], r["N"], r["T"]) == (B, N, T)}

        def get(variant: str, key: str, by=by):
            return by.get(variant, {}).get(key)

        ref, fused, bound = get("reference", "ms"), get("fused", "ms"), get("fused", "bound_ms")
        lines.append(
            f"{B:>4} {N:>5} {T:>5} | {fmt(get('static', 'ms'), '10.0f')} {fmt(ref, '10.0f')} {fmt(fused, '10.0f')} "
            f"{fmt(get('fused-eager', 'ms'), '9.0f')} {fmt(bound, '9.0f')} | "
            f"{_ratio(ref, fused):>9} {_ratio(fused, bound):>11} | "
            f"{fmt(get('reference', 'peak_rss_mb'), '8.0f')} {fmt(get('fused', 'peak_rss_mb'), '8.0f')} "
            f"{_ratio(get('fused', 'peak_rss_mb'), get('reference', 'peak_rss_mb')):>13}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the first size, (32, 64, 100)")
    parser.add_argument("--sizes", type=str, default=None, help="e.g. '32,128,50;16,256,100' (overrides the list)")
    parser.add_argument("--variants", type=str, default=",".join(VARIANTS))
    parser.add_argument("--rule", default="oja")
    parser.add_argument("--mode", default="plain")
    parser.add_argument("--projection", default="recurrent", choices=("input", "recurrent", "readout"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--checkpoint-interval",
        type=int,
        default=None,
        help="fused kernel: H kept every k steps, the rest recomputed (default ceil(sqrt(T))); 0 keeps every step",
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per configuration")
    parser.add_argument("--worker", nargs=4, metavar=("B", "N", "T", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--bandwidth-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.bandwidth_worker:
        print(json.dumps({"bandwidth": measure_bandwidth()}))
        return
    if args.worker:
        B, N, T, variant = int(args.worker[0]), int(args.worker[1]), int(args.worker[2]), args.worker[3]
        print(json.dumps(run_worker(B, N, T, variant, args)))
        return

    if args.sizes:
        sizes = [tuple(int(v) for v in s.split(",")) for s in args.sizes.split(";")]
    else:
        sizes = SIZES[:1] if args.quick else SIZES
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS) - set(EXTRA_VARIANTS)
    if unknown:
        parser.error(f"unknown variant(s) {sorted(unknown)}; known: {', '.join(VARIANTS + EXTRA_VARIANTS)}")
    shared = ["--rule", args.rule, "--mode", args.mode, "--projection", args.projection, "--seed", str(args.seed)]
    if args.checkpoint_interval is not None:
        shared += ["--checkpoint-interval", str(args.checkpoint_interval)]
    shared += ["--repeats", str(args.repeats), "--warmup", str(args.warmup), "--threads", str(args.threads)]

    bw = _child(["--bandwidth-worker"], args.timeout).get("bandwidth")
    print(
        f"# single-core copy bandwidth {bw / 1e9:.1f} GB/s (read + write); {args.rule}/{args.mode} on the "
        f"{args.projection} projection; fused checkpoint interval {args.checkpoint_interval or 'ceil(sqrt(T))'}; "
        f"{args.threads} thread(s); median of {args.repeats} after {args.warmup} "
        f"warm-up; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
        flush=True,
    )
    rows = []
    for B, N, T in sizes:
        bound_ms = 1e3 * PASSES * B * N * N * 4 * T / bw
        for variant in variants:
            res = _child([*shared, "--worker", str(B), str(N), str(T), variant], args.timeout)
            row = {"B": B, "N": N, "T": T, "variant": variant, "ms": res.get("ms"), "cpu_ms": res.get("cpu_ms")}
            row.update(peak_rss_mb=res.get("peak_rss_mb"), bound_ms=bound_ms)
            if "error" in res:
                row["error"] = res["error"]
            rows.append(row)
            print(json.dumps({k: (round(v, 1) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    print()
    print(summary(rows))
    print(
        "ms: median wall time of one forward + backward over the B x T batch (eager: the fused kernel "
        "with torch.compile off, --variants ...,fused-eager); bound: "
        f"{PASSES} passes over the B x N x N state per step at the copy bandwidth; mem: peak RSS of each process."
    )


if __name__ == "__main__":
    main()
