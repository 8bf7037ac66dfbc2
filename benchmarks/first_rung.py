"""What a user's first search gets: generation 0 of the shipped search from empty caches, then warm.

Runs ``configs/cue_association_search.yaml``'s first generation twice through the real CLI
(local Ray, a fresh MLflow store each time): once with empty kernel caches (``HYBRIDOPT_CACHE``
for the native library, ``TORCHINDUCTOR_CACHE_DIR`` for ``torch.compile``), as on a fresh
machine, then again with the caches the first run filled.  Each candidate trains one rung of
``--cpu-s`` CPU seconds (the shipped rung 0: a quarter of 3 CPU-minutes), so the same seed gives
the same genomes both times.  Prints per candidate ``train_steps`` and ``compile_cpu_s`` cold
and warm, and the ratio of steps trained cold to warm (the compile of a structure, where one is
needed, is kept out of the candidate's budget and reported as ``compile_cpu_s``).

    python -m benchmarks.first_rung                          # 4 candidates, 45 CPU-s each
    python -m benchmarks.first_rung --set network.kernel=compiled   # the compiled steps instead
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "cue_association_search.yaml"


METRICS = ("train_steps", "compile_cpu_s", "fitness", "cpu_time_s")


def run_generation(work: Path, caches: Path, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """One generation-0 search in ``work`` with kernel caches under ``caches``; per candidate
    (its genome's label) the child's metrics."""
    env = {
        **os.environ,
        "HYBRIDOPT_CACHE": str(caches / "hybridopt"),
        "TORCHINDUCTOR_CACHE_DIR": str(caches / "inductor"),
        "PYTHONPATH": str(REPO),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    sets = [
        "search.generations=1",
        "search.rungs=[1.0]",
        "search.final_budget=0",
        f"search.population={args.population}",
        f"train.cpu_minutes={args.cpu_s / 60.0}",
        *args.set,
    ]
    cmd = [sys.executable, "-m", "hybridopt", "search", str(CONFIG), "--seed", str(args.seed), "--fresh"]
    cmd += [a for s in sets for a in ("--set", s)]
    cmd += ["--tracking-uri", f"sqlite:///{work / 'mlflow.db'}"]
    out = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=args.timeout)
    if out.returncode != 0:
        raise SystemExit(f"search failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("cue_association_search")
    runs = client.search_runs([exp.experiment_id], "tags.`hybridopt.kind` = 'candidate'")
    return {
        r.data.tags.get("mlflow.runName", r.info.run_id): {
            "status": r.info.status,
            **{k: r.data.metrics.get(k, float("nan")) for k in METRICS},
        }
        for r in runs
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=4)
    parser.add_argument("--cpu-s", type=float, default=45.0, help="each candidate's rung budget")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--set", action="append", default=[], help="further config overrides")
    parser.add_argument("--timeout", type=float, default=3600.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        caches = root / "caches"
        results = {}
        for name in ("cold", "warm"):
            work = root / name
            work.mkdir()
            results[name] = run_generation(work, caches, args)
    cold, warm = results["cold"], results["warm"]
    head = f"{'candidate':<28} {'steps cold':>10} {'steps warm':>10} {'compile s cold':>14} {'compile s warm':>14}"
    print(head, "status")
    total = {"cold": 0.0, "warm": 0.0}
    for name in sorted(cold):
        c, w = cold[name], warm.get(name, {})
        total["cold"] += c["train_steps"]
        total["warm"] += w.get("train_steps", float("nan"))
        print(
            f"{name:<28} {c['train_steps']:>10.0f} {w.get('train_steps', float('nan')):>10.0f} "
            f"{c['compile_cpu_s']:>14.2f} {w.get('compile_cpu_s', float('nan')):>14.2f} {c['status']}/{w.get('status')}"
        )
    print(f"steps trained cold / warm: {total['cold'] / total['warm']:.3f}")


if __name__ == "__main__":
    main()
