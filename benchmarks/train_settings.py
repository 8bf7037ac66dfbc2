"""CPU milliseconds per training step under two settings of a run, each in its own fresh process.

``--compare denormals``: subnormal floats kept or flushed to zero.  A trace or membrane that
decays as ``x_t = d^t x_0`` is subnormal (``|x| < 2^-126`` in float32) after ``126 / -log2(d)``
steps, and on x86 an operation on a subnormal takes tens of times as long; training runs flush
them (:func:`hybridopt.snn.kernels.cpu_numerics`).

``--compare freeze``: the parameters the config's ``train.freeze`` names held (as a training run
holds them: ``requires_grad`` off, so what only they need is not differentiated) or trained.

On a config with its overrides, single-threaded, ``--rounds`` times in turn (this machine's speed
drifts): the median CPU time of ``--steps`` training steps after ``--warm`` warm-up steps (which
compile), and the ratio of the two.

    python -m benchmarks.train_settings    # denormals: the pools network (beta 0.7, trace decay 0.5)
    python -m benchmarks.train_settings --compare freeze --set network.beta=0.9 --set plasticity.input.trace_decay=0.8
    python -m benchmarks.train_settings --config configs/cue_association.yaml --set network.beta=0.9
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from benchmarks.plastic_step import run_json

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "cue_association_noisy_pools.yaml"


SETTINGS = {"denormals": ("keep", "flush"), "freeze": ("train", "hold")}


def worker(config: str, overrides: list[str], setting: str, warm: int, steps: int) -> dict:
    import torch

    from hybridopt.config import load_config
    from hybridopt.train.gradient import build, frozen_parameters, hold, kernel_budget

    torch.set_num_threads(1)
    torch.set_flush_denormal(setting != "keep")
    cfg = load_config(config, overrides)
    task, net = build(cfg)
    hold(frozen_parameters(net, cfg.train.freeze), setting == "hold")
    net.set_budget(kernel_budget(cfg.train, 3600.0))  # the kernel a training run of this config gets
    opt = torch.optim.Adam(net.parameters(), lr=cfg.train.lr)
    gen = torch.Generator().manual_seed(0)
    tc = cfg.train

    def step() -> float:
        batch = task.batch(tc.batch_size, gen)
        cpu = time.process_time()
        y, s, _ = net(batch.x)
        loss = task.loss(y, batch) + tc.rate_reg * (s.mean(dim=(0, 1)) - tc.rate_target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        if loss.requires_grad:
            loss.backward()
        opt.step()
        return time.process_time() - cpu

    for _ in range(warm):
        step()
    times = [step() for _ in range(steps)]
    return {"setting": setting, "kernel": net.kernel_for(tc.batch_size), "ms_per_step": 1e3 * statistics.median(times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(CONFIG))
    ap.add_argument("--set", action="append", default=[], metavar="PATH=VALUE")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warm", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--compare", choices=sorted(SETTINGS), default="denormals")
    ap.add_argument("--worker", choices=[m for pair in SETTINGS.values() for m in pair], help=argparse.SUPPRESS)
    args = ap.parse_args()
    overrides = args.set
    if args.worker:
        print(json.dumps(worker(args.config, overrides, args.worker, args.warm, args.steps)))
        return
    argv = ["--config", args.config, "--steps", str(args.steps), "--warm", str(args.warm)]
    argv += [a for o in overrides for a in ("--set", o)]
    base, other = SETTINGS[args.compare]
    ms: dict[str, list[float]] = {other: [], base: []}
    for _ in range(args.rounds):
        for mode in ms:
            row = run_json("benchmarks.train_settings", [*argv, "--worker", mode], timeout=1800)
            print(json.dumps({"config": Path(args.config).name, "overrides": overrides, **row}), flush=True)
            if "ms_per_step" in row:
                ms[mode].append(row["ms_per_step"])
    if ms[base] and ms[other]:
        a, b = statistics.median(ms[base]), statistics.median(ms[other])
        print(f"ms per training step: {base} {a:.0f}, {other} {b:.0f}, {base} / {other} {a / b:.2f}")


if __name__ == "__main__":
    main()
