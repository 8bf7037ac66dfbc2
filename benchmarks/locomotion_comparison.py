"""Static vs plastic SNN policies on HalfCheetah-v5, measured in the training condition and
under novel conditions never seen in training.

Every run is a real ``train_es`` call (PGPE + ClipUp) on ``configs/halfcheetah_locomotion.yaml``
with only the plasticity and the seed changed, budgeted in CPU-minutes of its own process (one
thread); ``--procs`` runs go at once.  Each trained policy is evaluated on the config's held-out
seeds in the standard condition and each novel one (crippled back leg, friction x0.25, torso
mass x1.5).  Optionally (``--screen``) a short one-seed screen of plastic variants picks the
plastic variant to compare first.

Writes a markdown table (mean ± std over seeds of return and of degradation
``(R_standard - R_condition) / |R_standard|`` per condition) to stdout and ``table.md``, and CSV
files (``runs.csv``: one row per run and condition; ``summary.csv``) under ``--out``.  Each run's
result is also kept as JSON under ``--out/runs/`` and reused when the script is run again, so an
interrupted comparison resumes.

    python -m benchmarks.locomotion_comparison                 # 6 runs x 8 CPU-min, 2 at a time
    python -m benchmarks.locomotion_comparison --minutes 0.2 --seeds 0 --out /tmp/lc   # a dry run
    python -m benchmarks.locomotion_comparison --screen input:hebbian/plain input:hebbian/neuromodulated \\
        --screen-minutes 3
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any

CONFIG = "configs/halfcheetah_locomotion.yaml"
CONDITIONS = ("standard", "crippled_leg", "low_friction", "heavy_body")


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """One training run in a fresh process; returns its final metrics and cost."""
    from hybridopt.config import load_config, placement_overrides
    from hybridopt.train.es import train_es

    overrides = placement_overrides(job["variant"]) + [
        f"seed={job['seed']}",
        f"es.cpu_minutes={job['minutes']}",
        "es.generations=100000",
        "train.threads=1",
        *job["extra"],
    ]
    cfg = load_config(job["config"], overrides)
    r = train_es(cfg)
    curve = [(s, m["eval/return/standard"]) for s, m in r.history if "eval/return/standard" in m]
    return {
        **job,
        "status": r.status,
        "reason": r.reason,
        "generations": r.steps,
        "episodes": r.episodes,
        "cpu_s": r.cpu_time,
        "wall_s": r.wall_time,
        "metrics": r.final_metrics,
        "curve": curve,
    }


def _label(job: dict[str, Any]) -> str:
    return f"{job['stage']}__{job['variant'].replace(':', '-').replace('/', '-')}__seed{job['seed']}"


def run_jobs(jobs: list[dict[str, Any]], procs: int, out: Path) -> list[dict[str, Any]]:
    """Run the jobs ``procs`` at a time (spawned processes), reusing results already on disk."""
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    done, todo = [], []
    for job in jobs:
        path = runs_dir / f"{_label(job)}.json"
        if path.is_file():
            done.append(json.loads(path.read_text()))
        else:
            todo.append(job)
    if todo:
        with mp.get_context("spawn").Pool(procs) as pool:
            for res in pool.imap_unordered(run_one, todo):
                (runs_dir / f"{_label(res)}.json").write_text(json.dumps(res, indent=1))
                ret = res["metrics"].get("eval/return/standard", float("nan"))
                print(
                    f"[{time.strftime('%H:%M:%S')}] {_label(res)}: {res['status']} return {ret:.1f} "
                    f"({res['generations']} generations, {res['cpu_s'] / 60:.1f} CPU-min)",
                    flush=True,
                )
                done.append(res)
    return done


def _mean_std(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if math.isfinite(x)]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarise(results: list[dict[str, Any]], variants: list[str]) -> list[dict[str, Any]]:
    rows = []
    for v in variants:
        runs = [r for r in results if r["variant"] == v and r["status"] == "FINISHED"]
        for c in CONDITIONS:
            ret = _mean_std([r["metrics"][f"eval/return/{c}"] for r in runs])
            deg = _mean_std([r["metrics"][f"eval/degradation/{c}"] for r in runs])
            rows.append(
                {
                    "variant": v,
                    "condition": c,
                    "seeds": len(runs),
                    "return_mean": ret[0],
                    "return_std": ret[1],
                    "degradation_mean": deg[0],
                    "degradation_std": deg[1],
                    "generations_mean": _mean_std([float(r["generations"]) for r in runs])[0],
                    "cpu_min_mean": _mean_std([r["cpu_s"] / 60 for r in runs])[0],
                }
            )
    return rows


def markdown(rows: list[dict[str, Any]], variants: list[str]) -> str:
    head = "| condition | " + " | ".join(f"{v} return | {v} degradation" for v in variants) + " |"
    sep = "|---|" + "---:|---:|" * len(variants)
    lines = [head, sep]
    for c in CONDITIONS:
        cells = []
        for v in variants:
            r = next(x for x in rows if x["variant"] == v and x["condition"] == c)
            cells.append(f"{r['return_mean']:.0f} ± {r['return_std']:.0f}")
            cells.append(
                "—" if c == "standard" else f"{100 * r['degradation_mean']:.0f} % ± {100 * r['degradation_std']:.0f}"
            )
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    cost = []
    for v in variants:
        r = next(x for x in rows if x["variant"] == v)
        cost.append(
            f"{v}: {r['seeds']} seeds, {r['generations_mean']:.0f} generations, {r['cpu_min_mean']:.1f} CPU-min"
        )
    return "\n".join(lines) + "\n\n" + "; ".join(cost) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=CONFIG)
    p.add_argument("--plastic", default="input:hebbian/neuromodulated", help="<projection>:<rule>/<mode> to compare")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--minutes", type=float, default=8.0, help="CPU-minutes per run")
    p.add_argument("--procs", type=int, default=2, help="runs at once (one thread each)")
    p.add_argument("--screen", nargs="*", default=[], help="plastic variants to screen first (one seed)")
    p.add_argument("--screen-minutes", type=float, default=3.0)
    p.add_argument("--set", dest="extra", action="append", default=[], help="extra config override (repeatable)")
    p.add_argument("--out", default="benchmarks/results/locomotion_comparison")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = {"config": args.config, "extra": args.extra}

    plastic = args.plastic
    if args.screen:
        screen = run_jobs(
            [
                {**base, "stage": "screen", "variant": v, "seed": args.seeds[0], "minutes": args.screen_minutes}
                for v in args.screen
            ],
            args.procs,
            out,
        )
        ok = [r for r in screen if r["status"] == "FINISHED"]
        if ok:
            best = max(ok, key=lambda r: r["metrics"]["eval/return/standard"])
            plastic = best["variant"]
        for r in sorted(screen, key=lambda r: r["variant"]):
            print(f"screen {r['variant']}: return {r['metrics'].get('eval/return/standard', float('nan')):.1f}")
        print(f"best plastic variant: {plastic}")

    variants = ["static", plastic]
    jobs = [
        {**base, "stage": "compare", "variant": v, "seed": s, "minutes": args.minutes}
        for v in variants
        for s in args.seeds
    ]
    results = run_jobs(jobs, args.procs, out)
    failed = [r for r in results if r["status"] != "FINISHED"]
    for r in failed:
        print(f"FAILED {_label(r)}: {r['reason']}", file=sys.stderr)

    with open(out / "runs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "variant",
                "seed",
                "condition",
                "return",
                "return_std_over_episodes",
                "degradation",
                "generations",
                "cpu_s",
            ]
        )
        for r in sorted(results, key=lambda r: (r["variant"], r["seed"])):
            for c in CONDITIONS:
                m = r["metrics"]
                w.writerow(
                    [
                        r["variant"],
                        r["seed"],
                        c,
                        m.get(f"eval/return/{c}"),
                        m.get(f"eval/return_std/{c}"),
                        m.get(f"eval/degradation/{c}"),
                        r["generations"],
                        round(r["cpu_s"], 1),
                    ]
                )
    rows = summarise(results, variants)
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    table = markdown(rows, variants)
    (out / "table.md").write_text(table)
    print(table)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
