"""What a candidate's evaluation and test cost after training, in a fresh process and an empty cache.

A candidate trains on compiled steps, then measures its fitness on the evaluation episodes and
``test/accuracy`` on 1,024 test episodes, without gradients.  Each setting runs in its own fresh
single-threaded process with an empty Inductor cache (as a search's first candidate of a new
structure on a fresh machine): the training variant compiles (``prepare_kernel``), then the
evaluation and the test run, and the CPU seconds of each are reported, the compiler's processes
included.

``reuse``: a sequence without gradients of a kind trained in the process runs the training
variant (what training runs do).  ``separate``: the forward-only variant is compiled for it
instead (what they did before; the test then also ran in batches of 256, one more variant,
which this baseline does not count, so the saving measured here is a lower bound).

    python -m benchmarks.evaluation_compile                  # the pools network at noise 0.2
    python -m benchmarks.evaluation_compile --config configs/cue_association.yaml --set network.kernel=compiled
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
from pathlib import Path

from benchmarks.plastic_step import run_json

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "cue_association_noisy_pools.yaml"
SETTINGS = ("separate", "reuse")


def _cpu() -> float:
    r, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


class _Forgetful(set):
    """A set that keeps nothing: no kind counts as trained, so each compiles its own variant."""

    def add(self, item) -> None:
        pass


def worker(config: str, overrides: list[str], setting: str, episodes: int) -> dict:
    from hybridopt.config import load_config
    from hybridopt.snn import compiled
    from hybridopt.snn.kernels import cpu_numerics
    from hybridopt.train.gradient import build, evaluate, kernel_budget, prepare_kernel, test_accuracy

    if setting == "separate":
        compiled._trained = _Forgetful()
    cpu_numerics(1)
    cfg = load_config(config, overrides)
    task, net = build(cfg)
    net.set_budget(kernel_budget(cfg.train, 60.0 * cfg.train.cpu_minutes))
    train = prepare_kernel(net, task, cfg.train.batch_size)
    t0 = _cpu()
    evaluate(net, task, cfg)
    t1 = _cpu()
    test_accuracy(net, task, cfg, episodes)
    t2 = _cpu()
    return {"setting": setting, "kernel": net.kernel_for(cfg.train.batch_size), "train_compile_s": train,
            "evaluate_s": t1 - t0, "test_s": t2 - t1}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(CONFIG))
    ap.add_argument("--set", action="append", default=[], metavar="PATH=VALUE")
    ap.add_argument("--episodes", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--worker", choices=SETTINGS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.config, args.set, args.worker, args.episodes)))
        return
    argv = ["--config", args.config, "--episodes", str(args.episodes)]
    argv += [a for o in args.set for a in ("--set", o)]
    after: dict[str, list[float]] = {s: [] for s in SETTINGS}
    for _ in range(args.rounds):
        for setting in SETTINGS:
            with tempfile.TemporaryDirectory(prefix="inductor") as cache:
                env = {"TORCHINDUCTOR_CACHE_DIR": cache, "PYTHONPATH": str(REPO)}
                row = run_json("benchmarks.evaluation_compile", [*argv, "--worker", setting], 3600, env=env)
            print(json.dumps({"config": Path(args.config).name, "overrides": args.set, **row}), flush=True)
            if "test_s" in row:
                after[setting].append(row["evaluate_s"] + row["test_s"])
    a, b = (statistics.median(after[s]) if after[s] else None for s in SETTINGS)
    if a and b:
        print(f"CPU-s for evaluation and test after training: separate {a:.1f}, reuse {b:.1f}, ratio {a / b:.1f}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
