"""Plastic vs static on cue association, measured.

(a) Screening: all-static and every plastic family x {plain, neuromodulated} on the input
    projection, plus the best of those on the recurrent projection instead, one seed, at a
    short CPU budget each.
(b) Confirmation: all-static vs the best two from (a) at the full budget, ``--seeds`` seeds,
    clean and noisy (trained and evaluated at ``--noise``).

Every run is a real ``train_gradient`` call on ``configs/cue_association.yaml`` with only
the plasticity (and noise) changed, budgeted in CPU-minutes of its own process; ``--procs``
runs go at once.  Writes a table (mean ± std over seeds of the eval accuracy, which the
screening selects on, and of the accuracy on ``train.test_episodes`` fresh episodes of seeds
reserved for testing, which nothing selected on; episodes seen, wall time) to stdout, CSV files
under ``--out``, and one MLflow run (``hybridopt.kind=benchmark``).

    python benchmarks/plastic_vs_static.py                      # ~2 h on 2 cores
    python benchmarks/plastic_vs_static.py --screen-minutes 0.2 --confirm-minutes 0.2 --seeds 1   # a dry run

``--throughput STEPS`` measures instead what a training step costs under each kernel: every
configuration of the screening, trained for ``STEPS`` steps with ``network.kernel=reference``
(plain autograd) and with the default fused kernel, each in a fresh process, 1 thread; CPU ms
per step (two single-batch evaluations included) and the reference / fused ratio.

    python benchmarks/plastic_vs_static.py --throughput 60
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from hybridopt.config import load_config, placement_overrides
from hybridopt.train.gradient import train_gradient

FAMILIES = ("hebbian", "oja", "bcm", "stdp")
MODES = ("plain", "neuromodulated")


def _train(job: dict[str, Any], *overrides: str):
    """``train_gradient`` on the job's config and placement, 1 thread, no evaluation on the way."""
    extra = [*overrides, "train.eval_every=100000", "train.threads=1"]
    return train_gradient(load_config(job["config"], placement_overrides(job["variant"]) + extra))


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    seed, noise, budget = f"seed={job['seed']}", f"task.noise={job['noise']}", f"train.cpu_minutes={job['minutes']}"
    r = _train(job, seed, noise, budget, "train.steps=1000000")
    return {
        **job,
        "accuracy": r.fitness if not r.failed else float("nan"),
        "test_accuracy": r.final_metrics.get("test/accuracy", float("nan")),
        "status": r.status,
        "episodes": r.episodes,
        "wall_s": r.wall_time,
        "cpu_s": r.cpu_time,
    }


def time_one(job: dict[str, Any]) -> dict[str, Any]:
    kernel, steps = f"network.kernel={job['kernel']}", f"train.steps={job['steps']}"
    r = _train(job, kernel, steps, "train.cpu_minutes=null", "train.eval_batches=1")
    return {**job, "status": r.status, "ms_per_step": 1e3 * r.cpu_time / max(r.steps, 1)}


def throughput(args: argparse.Namespace, out: Path) -> None:
    variants = ["static", *(f"input:{f}/{m}" for f in FAMILIES for m in MODES), "recurrent:stdp/neuromodulated"]
    jobs = [
        {"config": args.config, "variant": v, "kernel": k, "steps": args.throughput}
        for v in variants
        for k in ("reference", "fused")
    ]
    with mp.get_context("spawn").Pool(args.procs, maxtasksperchild=1) as pool:
        rows = pool.map(time_one, jobs)
    by = {(r["variant"], r["kernel"]): r for r in rows}
    lines = [
        f"CPU ms per training step, {args.throughput} steps, 1 thread:",
        "",
        "| plasticity | reference ms/step | fused ms/step | reference / fused |",
        "|---|---|---|---|",
    ]
    for v in variants:
        ref, fused = by[(v, "reference")], by[(v, "fused")]
        if ref["status"] != "FINISHED" or fused["status"] != "FINISHED":
            lines.append(f"| {v} | {ref['status']} | {fused['status']} | - |")
            continue
        a, b = ref["ms_per_step"], fused["ms_per_step"]
        lines.append(f"| {v} | {a:.1f} | {b:.1f} | {a / b:.2f} |")
    md = "\n".join(lines)
    print(md)
    write_csv(out / "throughput.csv", rows)
    (out / "throughput.md").write_text(md + "\n")


FIELDS = [
    "config", "stage", "variant", "seed", "noise", "minutes", "accuracy", "test_accuracy", "status", "episodes",
    "wall_s", "cpu_s",
]  # fmt: skip


def _key(job: dict[str, Any]) -> tuple:
    return (job["stage"], job["variant"], int(job["seed"]), float(job["noise"]), float(job["minutes"]))


def load_done(path: Path) -> dict[tuple, dict[str, Any]]:
    """Rows already measured (``--resume``): each run is appended to runs.csv as it ends."""
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("seed", "episodes"):
            r[k] = int(r[k])
        for k in ("noise", "minutes", "accuracy", "wall_s", "cpu_s"):
            r[k] = float(r[k])
        r["test_accuracy"] = float(r.get("test_accuracy") or "nan")  # (absent from older files)
    return {_key(r): r for r in rows}


def run_all(jobs: list[dict[str, Any]], procs: int, log: Path, done: dict[tuple, dict[str, Any]]):
    out = [done[_key(j)] for j in jobs if _key(j) in done]
    todo = [j for j in jobs if _key(j) not in done]
    if not todo:
        return out
    new_file = not log.exists()
    with mp.get_context("spawn").Pool(procs, maxtasksperchild=1) as pool, open(log, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new_file:
            writer.writeheader()
        for r in pool.imap_unordered(run_one, todo):
            writer.writerow({k: r[k] for k in FIELDS})
            f.flush()
            print(
                f"  {r['stage']:<8} {r['variant']:<32} noise={r['noise']:<4} seed={r['seed']} "
                f"acc={r['accuracy']:.3f} test={r['test_accuracy']:.3f} episodes={r['episodes']} "
                f"wall={r['wall_s']:.0f}s",
                flush=True,
            )
            out.append(r)
    return out


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["stage"], r["variant"], r["noise"]), []).append(r)
    table = []
    for (stage, variant, noise), rs in groups.items():
        acc = [r["accuracy"] for r in rs]
        test = [r["test_accuracy"] for r in rs]
        table.append(
            {
                "stage": stage,
                "variant": variant,
                "noise": noise,
                "seeds": len(rs),
                "acc_mean": statistics.fmean(acc),
                "acc_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                "test_mean": statistics.fmean(test),
                "test_std": statistics.stdev(test) if len(test) > 1 else 0.0,
                "episodes": statistics.fmean(r["episodes"] for r in rs),
                "wall_s": statistics.fmean(r["wall_s"] for r in rs),
                "cpu_min": rs[0]["minutes"],
            }
        )
    table.sort(key=lambda t: (t["stage"] != "screen", t["noise"], -t["acc_mean"]))
    return table


def _pm(mean: float, std: float) -> str:
    """``mean ± std``, or ``-`` where nothing was measured (NaN)."""
    return "-" if mean != mean else f"{mean:.3f} ± {std:.3f}"


def markdown(table: list[dict[str, Any]]) -> str:
    lines = [
        "| stage | plasticity | noise | seeds | eval accuracy (mean ± std) | fresh test accuracy (mean ± std) "
        "| episodes | wall s | CPU-min |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t in table:
        lines.append(
            f"| {t['stage']} | {t['variant']} | {t['noise']} | {t['seeds']} | "
            f"{t['acc_mean']:.3f} ± {t['acc_std']:.3f} | {_pm(t['test_mean'], t['test_std'])} | "
            f"{t['episodes']:.0f} | {t['wall_s']:.0f} | {t['cpu_min']} |"
        )
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/cue_association.yaml")
    ap.add_argument("--screen-minutes", type=float, default=3.0)
    ap.add_argument("--confirm-minutes", type=float, default=10.0)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--noise", type=float, default=0.2)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/plastic_vs_static")
    ap.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    ap.add_argument("--resume", action="store_true", help="reuse the runs already in OUT/runs.csv")
    ap.add_argument("--throughput", type=int, metavar="STEPS", help="only time training steps per kernel")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.throughput:
        throughput(args, out)
        return 0
    log = out / "runs.csv"
    if not args.resume:
        log.unlink(missing_ok=True)
    done = load_done(log)
    t0 = time.time()

    base = {"config": args.config, "seed": 0, "noise": 0.0}
    screen = [{**base, "stage": "screen", "variant": "static", "minutes": args.screen_minutes}]
    screen += [
        {**base, "stage": "screen", "variant": f"input:{f}/{m}", "minutes": args.screen_minutes}
        for f in FAMILIES
        for m in MODES
    ]
    print(f"(a) screening {len(screen)} configurations at {args.screen_minutes} CPU-min each", flush=True)
    rows = run_all(screen, args.procs, log, done)
    best_input = max((r for r in rows if r["variant"] != "static"), key=lambda r: r["accuracy"])
    rec = "recurrent:" + best_input["variant"].split(":")[1]
    rows += run_all(
        [{**base, "stage": "screen", "variant": rec, "minutes": args.screen_minutes}], args.procs, log, done
    )
    ranked = sorted((r for r in rows if r["variant"] != "static"), key=lambda r: -r["accuracy"])
    best_two = [r["variant"] for r in ranked[:2]]

    print(f"(b) confirmation: static vs {best_two}, {args.seeds} seeds, clean and noise={args.noise}", flush=True)
    confirm = [
        {
            "config": args.config,
            "stage": "confirm",
            "variant": v,
            "seed": s,
            "noise": n,
            "minutes": args.confirm_minutes,
        }
        for n in (0.0, args.noise)
        for v in ["static", *best_two]
        for s in range(args.seeds)
    ]
    rows += run_all(confirm, args.procs, log, done)

    table = summarise(rows)
    md = markdown(table)
    print(md)
    write_csv(out / "summary.csv", table)
    (out / "summary.md").write_text(md + "\n")
    print(f"total wall time {time.time() - t0:.0f}s; results in {out}")

    from hybridopt.tracking import Tracker

    tracker = Tracker(args.tracking_uri, "benchmarks")
    run = tracker.start_run("plastic_vs_static", "benchmark", params=vars(args))
    tracker.log_metrics(
        run,
        {
            f"{t['stage']}/{t['variant']}/noise{t['noise']}/{name}".replace(":", "_"): t[key]
            for t in table
            for name, key in (("accuracy", "acc_mean"), ("test_accuracy", "test_mean"))
            if t[key] == t[key]  # (NaN: not measured)
        },
    )
    for name in ("runs.csv", "summary.csv", "summary.md"):
        tracker.log_artifact_file(run, out / name)
    tracker.end_run(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
