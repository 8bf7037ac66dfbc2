"""CPU time of one ES generation of a locomotion config: every sample played alone against the
whole population played side by side.

One generation of ``--config`` (default ``configs/halfcheetah_damage.yaml``: population 48,
two training conditions, 500-step episodes) plays every sample on one seed in every training
condition.  ``alone``: each sample's episodes on its own (the network stepped once per sample
and control step; with the config's kernel, the compiled single step where it applies, warmed
before timing).  ``side by side``: :meth:`Locomotion.rollout_members`, one network step for all
samples, conditions and seeds.  ``simulator``: the same number of MuJoCo steps with zero actions
and no network, the floor both approach.  One thread, process CPU time, ``--rounds`` rounds in
turn, medians; ratios are within the same run.

    python -m benchmarks.es_generation                       # 3 rounds, the shipped damage config
    python -m benchmarks.es_generation --set plasticity.input.rule=none   # the static network
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch.nn.utils import parameters_to_vector

from hybridopt.config import load_config
from hybridopt.tasks.base import ObsNormalizer
from hybridopt.train.es import _play, _play_all, _searched, build_policy


def _cpu(fn) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/halfcheetah_damage.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--samples", type=int, default=0, help="samples per generation (default: es.popsize)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.config, args.set)
    task, net = build_policy(cfg)
    P = args.samples or cfg.es.popsize
    conditions = list(cfg.task.train_conditions)
    norm = ObsNormalizer(np.zeros(task.n_in), np.ones(task.n_in), 1.0)
    center = parameters_to_vector(_searched(task, net)).clone()
    gen = torch.Generator().manual_seed(0)
    samples = [center + 0.1 * torch.randn(center.shape, generator=gen) for _ in range(P)]
    seeds = [11]
    _play(task, net, samples[0], seeds, norm)  # a compiled step compiles here, not in the timing
    _play_all(task, net, samples[:2], seeds, norm)
    envs = {c: task.envs(c, P) for c in conditions}
    zero = np.zeros(task.n_out)

    def simulator() -> None:
        for c in conditions:
            for env in envs[c]:
                env.reset(seed=seeds[0])
                for _ in range(cfg.task.episode_steps):
                    env.step(zero)

    times: dict[str, list[float]] = {"alone": [], "side by side": [], "simulator": []}
    for _ in range(args.rounds):
        times["alone"].append(_cpu(lambda: [_play(task, net, x, seeds, norm) for x in samples]))
        times["side by side"].append(_cpu(lambda: _play_all(task, net, samples, seeds, norm)))
        times["simulator"].append(_cpu(simulator))
    played = P * len(conditions) * len(seeds) * cfg.task.episode_steps
    base = statistics.median(times["alone"])
    print(f"{args.config} {' '.join(args.set)}".strip())
    print(f"{P} samples x {len(conditions)} conditions x 1 seed x {cfg.task.episode_steps} steps;", end=" ")
    print(f"median of {args.rounds} rounds, 1 thread\n")
    print("| played | CPU s / generation | ms / played step | x faster than alone |")
    print("|---|---|---|---|")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"| {name} | {m:.2f} | {1e3 * m / played:.3f} | {base / m:.2f} |")


if __name__ == "__main__":
    main()
