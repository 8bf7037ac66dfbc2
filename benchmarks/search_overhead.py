"""Orchestration overhead of ``hybridopt search`` and its speed-up with 2 workers.

Three measurements in one run, on the same K candidate genomes (the first generation of
the smoke search, with ``train.steps`` set so that one candidate takes ~``--seconds``):

1. plain loop: ``train_candidate`` on each genome, one after the other, in this process;
2. the search with a 1-CPU local Ray instance (Ray tasks, MLflow parent + child runs,
   checkpoint): overhead = search / plain - 1;
3. the same search with a 2-CPU local Ray instance: speed-up = (2) / (3).

Ray's start-up is timed separately (it is paid once per search, not per candidate).

    python benchmarks/search_overhead.py            # K=8 candidates of ~5 s
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch

from hybridopt.config import load_config
from hybridopt.search.dispatch import init_ray
from hybridopt.search.driver import run_search
from hybridopt.search.ga import GenomeProblem, make_algorithm
from hybridopt.search.genome import GenomeSpace
from hybridopt.tracking import Tracker
from hybridopt.train import train_candidate

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "smoke_search.yaml"


def calibrate_steps(seconds: float) -> int:
    """Steps for one candidate to take ``seconds``, from the marginal cost of a step (the
    difference of two runs, so the fixed cost of building and evaluating cancels)."""
    torch.set_num_threads(1)

    def timed(steps: int) -> float:
        cfg = load_config(CONFIG, [f"train.steps={steps}", "train.eval_every=1000000"])
        t0 = time.perf_counter()
        train_candidate(cfg)
        return time.perf_counter() - t0

    timed(5)  # warm-up
    fixed_and_20, fixed_and_100 = timed(20), timed(100)
    per_step = (fixed_and_100 - fixed_and_20) / 80
    return max(1, int((seconds - fixed_and_20 + 20 * per_step) / per_step))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=5.0, help="target duration of one candidate")
    args = ap.parse_args()
    K = args.candidates
    steps = calibrate_steps(args.seconds)
    overrides = [
        f"search.population={K}",
        "search.elite=0",
        "search.generations=1",
        f"train.steps={steps}",
        "train.eval_every=1000000",
        # every candidate the same size so that the 1- and 2-worker runs are comparable
        "search.genes={plasticity.input.rule: {choices: [hebbian, oja]}, train.lr: {low: 0.001, high: 0.01}}",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        overrides.append(f"search.checkpoint={tmp}/c.ckpt")
        cfg = load_config(CONFIG, overrides)
        space = GenomeSpace.from_config(cfg.search)
        first_gen = make_algorithm(GenomeProblem(len(space), cfg.seed, lambda v: v[:, 0]), cfg.search, space)
        genomes = [space.decode(u.tolist()) for u in first_gen.population.values]

        t0 = time.perf_counter()
        for values in genomes:
            train_candidate(space.config_for(cfg, values))
        plain = time.perf_counter() - t0

        timings = {}
        for workers in (1, 2):
            t0 = time.perf_counter()
            init_ray(num_cpus=workers)
            startup = time.perf_counter() - t0
            tracker = Tracker(f"sqlite:///{tmp}/m{workers}.db", "overhead")
            t0 = time.perf_counter()
            out = run_search(cfg, tracker)
            timings[workers] = (time.perf_counter() - t0, startup)
            assert len(out.records) == K
            ray.shutdown()

    s1, s2 = timings[1][0], timings[2][0]
    print(f"K={K} candidates of ~{plain / K:.2f} s ({steps} steps each), this machine")
    print(f"plain loop                 {plain:8.2f} s")
    print(f"search, 1 worker           {s1:8.2f} s   (Ray start-up {timings[1][1]:.2f} s, not included)")
    print(f"search, 2 workers          {s2:8.2f} s   (Ray start-up {timings[2][1]:.2f} s, not included)")
    print(f"orchestration overhead     {100 * (s1 / plain - 1):+8.1f} %   (search 1 worker / plain loop - 1)")
    print(f"speed-up 2 workers vs 1    {s1 / s2:8.2f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
