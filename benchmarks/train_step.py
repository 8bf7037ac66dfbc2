"""CPU milliseconds per training step at the tasks' own size: reference, eager fused, compiled steps and native.

Each configuration runs in a fresh process on 1 thread: the shipped
``configs/cue_association.yaml`` (B = 32, 35 inputs, 64 hidden LIF neurons, 240 time steps per
episode) with the plasticity of its row, and one training step is what the inner loop does:
a batch of episodes, forward, task loss plus the rate regulariser, backward, Adam.  Variants:

``reference``  ``network.kernel=reference`` (plain autograd)
``fused``      the eager fused plastic-synapse kernel (``kernel=fused``, ``compile=never``)
``compiled``   whole time steps through ``torch.compile`` (``kernel=compiled``; the default before
               the native kernel)
``native``     the shipped default (``kernel=auto``, which is the native sequence kernel on CPU)

Warm-up covers a kernel's build (the compiled steps compile per structure on their first
sequence; the native library builds once per machine): reported as ``compile_s`` (wall seconds
of the warm-up beyond its steps' own time, with an empty cache: Inductor's for ``compiled``,
``HYBRIDOPT_CACHE`` for ``native``) and ``compile_warm_s`` (the same in a second process with
that cache).  Then the median CPU time of ``--repeats`` steps.

Roofline: bytes the step must move per time step, ``9 * B * I * J * 4`` for each plastic
projection (the state read and written in forward and backward, as in
``benchmarks/plastic_step.py``) plus one read of every weight matrix per pass, over the
single-core bandwidth measured in a subprocess, once from DRAM (a 256 MiB copy) and once from
L2 (a 256 KiB copy repeated): ``bound_dram_ms`` and ``bound_l2_ms`` per training step.  The
arithmetic bound ``bound_flop_ms``: the floating-point operations a step must do per time step
(:data:`FLOPS_PER_SYNAPSE` per plastic synapse and sample: current, update, its recomputation
and its backward; ``6 * B * I * J`` per dense projection: forward and two backward products)
over the single-core rate of a large float32 matrix product measured in a subprocess.  This
machine's speed drifts (by 40 % within an hour, idle), so each worker also times a 256 KiB copy
just before every step and reports ``over_l2_inproc``, the median of step / L2 bound at that
moment; ``--rounds N`` measures every configuration N times, in turn, and reports medians.

Forward only (``--policy``): the shipped ``configs/halfcheetah_locomotion.yaml`` policy (64
hidden, neuromodulated Hebbian input) playing HalfCheetah episodes of 500 steps one at a time, as
an ES generation's samples do (no gradients), stepped with the reference maths and with the
compiled step the ES loop uses by default: episodes per CPU second, MuJoCo included, after one
warm-up episode (which compiles).

Output: one JSON line per (config, variant) with ``config, variant, ms_per_step,
ms_per_time_step, compile_s`` (and ``compile_warm_s``, the bounds), then a table of ratios;
with ``--policy``, JSON lines ``config, variant, episodes_per_cpu_s, ms_per_env_step``.

    python -m benchmarks.train_step              # every row (about 30 minutes on 2 cores)
    python -m benchmarks.train_step --rows stdp-nm-input,static
    python -m benchmarks.train_step --rows stdp-nm-input,static --variants compiled,native --rounds 3
    python -m benchmarks.train_step --rows '' --policy
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.plastic_step import run_json

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "cue_association.yaml"

ROWS: dict[str, list[str]] = {
    "static": ["plasticity.input.rule=none"],
    "stdp-nm-input": [],  # the shipped configuration
    "stdp-nm-input+recurrent": ["plasticity.recurrent.rule=stdp", "plasticity.recurrent.modulation=neuromodulated"],
    "oja-input": ["plasticity.input.rule=oja", "plasticity.input.modulation=plain"],
    "bcm-input": ["plasticity.input.rule=bcm", "plasticity.input.modulation=plain"],
    "hebbian-input": ["plasticity.input.rule=hebbian", "plasticity.input.modulation=plain"],
    "hebbian-nm-recurrent": [
        "plasticity.input.rule=none",
        "plasticity.recurrent.rule=hebbian",
        "plasticity.recurrent.modulation=neuromodulated",
    ],
}
VARIANTS = {
    "reference": ["network.kernel=reference"],
    "fused": ["network.kernel=fused", "network.compile=never"],
    "compiled": ["network.kernel=compiled"],
    "native": [],  # the default
}
# Per plastic synapse, sample and time step: the plastic current (2), the update D, U, clip (~8),
# its recomputation in backward (~8) and its backward (clip mask, mode and rule products,
# reductions, the current's three products: ~22).
FLOPS_PER_SYNAPSE = 40


def flop_rate() -> float:
    """Single-thread float32 FLOP/s of a 1024^3 matrix product (the machine's practical peak)."""
    import torch

    torch.set_num_threads(1)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * 1024**3 / best


L2_KIB = 256


def bandwidth(kib: int, repeats: int) -> float:
    """Single-thread copy bandwidth in bytes/s (bytes read plus written) for a ``kib`` KiB buffer."""
    import torch

    torch.set_num_threads(1)
    src = torch.ones(kib * 1024 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(max(1, (1 << 28) // (kib * 1024))):  # ~256 MiB per timing
            dst.copy_(src)
        best = min(best, (time.perf_counter() - t) / max(1, (1 << 28) // (kib * 1024)))
    return 2 * src.numel() * 4 / best


def worker(row: str, variant: str, repeats: int) -> dict:
    import torch

    from hybridopt.config import load_config
    from hybridopt.snn.network import PROJECTIONS
    from hybridopt.train.gradient import build

    torch.set_num_threads(1)
    cfg = load_config(CONFIG, ROWS[row] + VARIANTS[variant])
    task, net = build(cfg)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.train.lr)
    gen = torch.Generator().manual_seed(0)
    tc = cfg.train

    l2_src = torch.ones(L2_KIB * 1024 // 4)
    l2_dst = torch.empty_like(l2_src)

    def l2_bandwidth() -> float:
        """This thread's L2 copy bandwidth now (bytes/s; the best of 3 timings of 64 copies)."""
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(64):
                l2_dst.copy_(l2_src)
            best = min(best, (time.perf_counter() - t) / 64)
        return 2 * l2_src.numel() * 4 / best

    def step() -> tuple[float, float]:
        batch = task.batch(tc.batch_size, gen)
        wall, cpu = time.perf_counter(), time.process_time()
        y, s, _ = net(batch.x)
        loss = task.loss(y, batch) + tc.rate_reg * (s.mean(dim=(0, 1)) - tc.rate_target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - wall, time.process_time() - cpu

    warm = 3
    w0 = time.perf_counter()
    warmup = [step() for _ in range(warm)]
    warm_wall = time.perf_counter() - w0
    runs, l2 = [], []
    for _ in range(repeats):  # each step beside a bandwidth timing: the machine's speed drifts
        l2.append(l2_bandwidth())
        runs.append(step())
    wall_med = statistics.median(r[0] for r in runs)
    T = task.batch(1, torch.Generator().manual_seed(0)).x.shape[1]
    spec = net.spec
    B = tc.batch_size
    state_bytes = sum(9 * B * a * b * 4 for p in PROJECTIONS if spec.projection(p).plastic for a, b in [spec.shape(p)])
    weight_bytes = sum(3 * a * b * 4 for p in PROJECTIONS for a, b in [spec.shape(p)])
    flops = sum(
        (FLOPS_PER_SYNAPSE if spec.projection(p).plastic else 6) * B * a * b
        for p in PROJECTIONS
        for a, b in [spec.shape(p)]
    )
    return {
        "config": row,
        "variant": variant,
        "kernel": net.kernel_for(B),
        "ms_per_step": 1e3 * statistics.median(r[1] for r in runs),
        "ms_per_time_step": 1e3 * statistics.median(r[1] for r in runs) / T,
        "wall_ms_per_step": 1e3 * wall_med,
        "compile_s": max(0.0, warm_wall - warm * wall_med) if variant in BUILT else 0.0,
        "first_steps_cpu_s": sum(r[1] for r in warmup),
        "bytes_per_time_step": state_bytes + weight_bytes,
        "flops_per_time_step": flops,
        "T": T,
        # the step against the L2 bound measured just before it, in this process: median over repeats
        "over_l2_inproc": statistics.median(
            r[1] / ((state_bytes + weight_bytes) * T / bw) for r, bw in zip(runs, l2, strict=True)
        ),
    }


def policy_worker(variant: str, episodes: int) -> dict:
    import torch

    from hybridopt.config import load_config
    from hybridopt.tasks.locomotion import ObsNormalizer
    from hybridopt.train.es import build_policy

    torch.set_num_threads(1)
    kernel = {"reference": "reference", "native": "auto"}[variant]
    cfg = load_config(REPO / "configs" / "halfcheetah_locomotion.yaml", [f"network.kernel={kernel}"])
    task, net = build_policy(cfg)
    params = net.params()
    norm = ObsNormalizer.identity(task.n_in)
    w0 = time.perf_counter()
    task.rollout(net, params, [0], norm)  # warm-up: compiles where the kernel does
    first = time.perf_counter() - w0
    cpu0 = time.process_time()
    steps = 0
    for i in range(episodes):
        steps += task.rollout(net, params, [i + 1], norm).steps
    cpu = time.process_time() - cpu0
    return {
        "config": "halfcheetah-policy",
        "variant": variant,
        "kernel": net.kernel_for(1, grad=False, single_step=True),
        "episodes_per_cpu_s": episodes / cpu,
        "ms_per_env_step": 1e3 * cpu / steps,
        "first_episode_s": first,
    }


# what each built variant builds, and the cache that keeps it between processes
BUILT = {"compiled": "TORCHINDUCTOR_CACHE_DIR", "native": "HYBRIDOPT_CACHE"}


def _child(argv: list[str], env: dict, timeout: float) -> dict:
    return run_json("benchmarks.train_step", argv, timeout, env)


def table(rows: list[dict]) -> str:
    head = (
        f"{'config':<26} {'reference':>10} {'fused':>8} {'compiled':>8} {'native':>8} {'ms/time step':>12} "
        f"{'ref/native':>10} {'compiled/native':>15} {'build s':>7} {'compile s':>9} {'warm s':>7} "
        f"{'DRAM bound':>10} {'L2 bound':>8} {'FLOP bound':>10} {'native/L2':>9}"
    )
    lines = [head, "-" * len(head)]
    for name in dict.fromkeys(r["config"] for r in rows):
        by = {r["variant"]: r for r in rows if r["config"] == name and "error" not in r}
        ms = {v: by[v]["ms_per_step"] if v in by else None for v in VARIANTS}

        def f(v, spec="8.1f"):
            return format(v, spec) if v is not None else "-"

        d, c = by.get("native", {}), by.get("compiled", {})
        ratio = lambda a, b: f"{a / b:.2f}" if a and b else "-"  # noqa: E731
        lines.append(
            f"{name:<26} {f(ms['reference'], '10.1f')} {f(ms['fused'])} {f(ms['compiled'])} {f(ms['native'])} "
            f"{f(d.get('ms_per_time_step'), '12.3f')} {ratio(ms['reference'], ms['native']):>10} "
            f"{ratio(ms['compiled'], ms['native']):>15} {f(d.get('compile_s'), '7.1f')} "
            f"{f(c.get('compile_s'), '9.1f')} {f(c.get('compile_warm_s'), '7.1f')} "
            f"{f(d.get('bound_dram_ms'), '10.2f')} {f(d.get('bound_l2_ms'), '8.2f')} "
            f"{f(d.get('bound_flop_ms'), '10.2f')} {f(d.get('over_l2_inproc'), '9.2f')}"
        )
    lines.append(
        "ms: CPU ms per training step (median); build s: the native library's first build (once per machine); "
        "compile s / warm s: the compiled steps' compile (per structure) with an empty / a filled cache; "
        "bounds: ms per training step at single-core bandwidth and FLOP rate; native/L2: the native step over "
        "the L2 bound measured just before each step in its own process (median)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from {', '.join(ROWS)}")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--rounds", type=int, default=1, help="measure every configuration this many times, in turn (medians)"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per configuration")
    parser.add_argument("--policy", action="store_true", help="also time the HalfCheetah policy, forward only")
    parser.add_argument("--episodes", type=int, default=20, help="timed episodes per policy variant")
    parser.add_argument("--policy-worker", metavar="VARIANT", help=argparse.SUPPRESS)
    parser.add_argument("--worker", nargs=2, metavar=("ROW", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--bandwidth-worker", type=int, metavar="KIB", help=argparse.SUPPRESS)
    parser.add_argument("--flops-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bandwidth_worker:
        print(json.dumps({"bandwidth": bandwidth(args.bandwidth_worker, 5)}))
        return
    if args.flops_worker:
        print(json.dumps({"flops": flop_rate()}))
        return
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.repeats)))
        return
    if args.policy_worker:
        print(json.dumps(policy_worker(args.policy_worker, args.episodes)))
        return
    rows = [r for r in args.rows.split(",") if r]
    variants = [v for v in args.variants.split(",") if v]
    bad = [r for r in rows if r not in ROWS] + [v for v in variants if v not in VARIANTS]
    if bad:
        parser.error(f"unknown row(s) or variant(s): {', '.join(bad)}")
    env: dict = {}
    sizes = {"dram": 262144, "l2": L2_KIB}  # KiB
    bw = {k: _child(["--bandwidth-worker", str(kib)], env, args.timeout).get("bandwidth") for k, kib in sizes.items()}
    flops = _child(["--flops-worker"], env, args.timeout).get("flops")
    out = []
    caches = {(r, v): tempfile.TemporaryDirectory() for r in rows for v in variants if v in BUILT}
    first: dict[tuple[str, str], dict] = {}
    later: dict[tuple[str, str], list[dict]] = {}
    # round 1: each configuration with a cold cache, then a warm one; later rounds warm, in turn,
    # so that a drift of the machine's speed falls on every configuration alike
    for rnd in range(args.rounds):
        for row in rows:
            for variant in variants:
                argv_ = ["--worker", row, variant, "--repeats", str(args.repeats)]
                child_env = {**env, BUILT[variant]: caches[row, variant].name} if variant in BUILT else env
                r = _child(argv_, child_env, args.timeout)
                if rnd > 0:
                    later.setdefault((row, variant), []).append(r)
                    continue
                if variant in BUILT:
                    r["compile_warm_s"] = _child(argv_, child_env, args.timeout).get("compile_s")
                first[row, variant] = r
    for c in caches.values():
        c.cleanup()
    for row in rows:
        for variant in variants:
            r = first[row, variant]
            r.setdefault("config", row)
            r.setdefault("variant", variant)
            done = [x for x in [r, *later.get((row, variant), [])] if "ms_per_step" in x]
            if args.rounds > 1 and done:
                r["ms_per_step_rounds"] = [x["ms_per_step"] for x in done]
                for k in ("ms_per_step", "ms_per_time_step", "wall_ms_per_step", "over_l2_inproc"):
                    r[k] = statistics.median(x[k] for x in done)
            if "bytes_per_time_step" in r:
                for k in ("dram", "l2"):
                    if bw[k]:
                        r[f"bound_{k}_ms"] = 1e3 * r["bytes_per_time_step"] * r["T"] / bw[k]
                if flops:
                    r["bound_flop_ms"] = 1e3 * r["flops_per_time_step"] * r["T"] / flops
            print(json.dumps(r), flush=True)
            out.append(r)
    if out:
        print(table(out))
    if args.policy:
        pol = {
            v: _child(["--policy-worker", v, "--episodes", str(args.episodes)], env, args.timeout)
            for v in ("reference", "native")
        }
        for r in pol.values():
            print(json.dumps(r), flush=True)
        a, b = pol["reference"].get("episodes_per_cpu_s"), pol["native"].get("episodes_per_cpu_s")
        if a and b:
            print(f"HalfCheetah policy: {a:.2f} -> {b:.2f} episodes per CPU second ({b / a:.2f}x)")


if __name__ == "__main__":
    main()
