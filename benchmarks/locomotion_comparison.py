"""Static against plastic SNN policies on a family of bodies, with damage held out, at equal
training CPU.

Every run is a real ``train_es`` call (PGPE + ClipUp) on ``--config`` (default
``configs/halfcheetah_damage.yaml``: trained on the intact body and a back leg at half torque,
the front leg at half torque and a shortened front foot held out), with only the method's
overrides and the seed changed, budgeted in CPU-minutes of its own process (one thread).  The
methods (``--method NAME=OVERRIDE;OVERRIDE``, repeatable, replace the defaults):

==============  =================================================================================
static          no plasticity anywhere, trained on the same bodies
plastic         the config's plasticity (neuromodulated Hebbian on the input), weights trained
plastic-random  weights drawn anew at every episode (``task.fresh_weights``), per-synapse ``abcd``
                plasticity on the input and the readout: only what builds the controller is learned
==============  =================================================================================

(The search's winner joins as one more ``--method`` with its genome as overrides.)  Each trained
policy is evaluated on held-out seeds in ``standard``, every trained-on condition and every
held-out one; retention is ``R_c / R_standard``.  Writes a markdown table (mean ± std over seeds)
to stdout and ``table.md``, ``runs.csv`` (one row per run and condition) and ``curves.png`` (each
run's return on the trained-on bodies, every ``es.eval_every`` generations, against generations
and against its training CPU-minutes) under ``--out``;
each run's result is kept as JSON under ``--out/runs/`` and reused, so an interrupted comparison
resumes.  Every run is also an MLflow run (``--tracking-uri``, default ``<out>/mlflow.db``) with
its returns per condition and their figure; ``hybridopt report`` draws the runs side by side.
``benchmarks.plasticity_ablation --out <the same>`` re-measures the runs on fresh episodes with
their plasticity switched off.

    python -m benchmarks.locomotion_comparison                           # 3 methods x 3 seeds x 30 CPU-min
    python -m benchmarks.locomotion_comparison --minutes 0.2 --seeds 0 --out /tmp/lc   # a dry run
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

CONFIG = "configs/halfcheetah_damage.yaml"
METHODS = {
    "static": ["plasticity.input.rule=none", "plasticity.readout.rule=none"],
    "plastic": [],
    "plastic-random": [
        "task.fresh_weights=true",
        "plasticity.input.rule=abcd",
        "plasticity.input.modulation=plain",
        "plasticity.readout.rule=abcd",
    ],
}


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """One training run in a fresh process, logged as an MLflow run named ``<method>__seed<seed>``
    (its curves, returns per condition and their figure); returns its final metrics and cost."""
    from hybridopt import api

    overrides = [*job["overrides"], f"seed={job['seed']}", f"es.cpu_minutes={job['minutes']}", "train.threads=1"]
    run = api.train(job["config"], overrides=[*overrides, *job["extra"]], tracking_uri=job["tracking_uri"],
                    run_name=_label(job))  # fmt: skip
    curve = [(s, m["eval/return/train"]) for s, m in run.history if "eval/return/train" in m]
    return {
        **job,
        "run_id": run.run_id,
        "status": run.status,
        "reason": run.reason,
        "generations": run.metrics["train_steps"],
        "episodes": run.metrics["episodes"],
        "cpu_s": run.metrics["cpu_time_s"],
        "wall_s": run.metrics["wall_time_s"],
        "metrics": run.metrics,
        "curve": curve,
    }


def _label(job: dict[str, Any]) -> str:
    return f"{job['method']}__seed{job['seed']}"


def run_jobs(jobs: list[dict[str, Any]], procs: int, out: Path) -> list[dict[str, Any]]:
    """Run the jobs ``procs`` at a time (spawned processes), reusing results already on disk."""
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    done, todo = [], []
    for job in jobs:
        path = runs_dir / f"{_label(job)}.json"
        (done if path.is_file() else todo).append(json.loads(path.read_text()) if path.is_file() else job)
    if todo:
        with mp.get_context("spawn").Pool(procs) as pool:
            for res in pool.imap_unordered(run_one, todo):
                (runs_dir / f"{_label(res)}.json").write_text(json.dumps(res, indent=1))
                m = res["metrics"]
                trained, held = m.get("eval/return/train", math.nan), m.get("eval/return/heldout", math.nan)
                print(
                    f"[{time.strftime('%H:%M:%S')}] {_label(res)}: {res['status']} trained-on return "
                    f"{trained:.1f}, held-out {held:.1f} "
                    f"({res['generations']} generations, {res['cpu_s'] / 60:.1f} CPU-min)",
                    flush=True,
                )
                done.append(res)
    return done


def _mean_std(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if math.isfinite(x)]
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _cell(runs: list[dict[str, Any]], metric: str, percent: bool = False) -> str:
    m, s = _mean_std([r["metrics"].get(metric, math.nan) for r in runs])
    if not math.isfinite(m):
        return "—"
    return f"{100 * m:.0f} % ± {100 * s:.0f}" if percent else f"{m:.0f} ± {s:.0f}"


def markdown(results: list[dict[str, Any]], methods: list[str], trained: list[str], heldout: list[str]) -> str:
    """Return per condition (trained on, then held out), the held-out mean and retention, and the cost."""
    from hybridopt.tasks.conditions import metric_key

    by = {m: [r for r in results if r["method"] == m and r["status"] == "FINISHED"] for m in methods}

    def row(label: str, metric: str, percent: bool = False) -> str:
        return f"| {label} | " + " | ".join(_cell(by[m], metric, percent) for m in methods) + " |"

    lines = ["| condition | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    for c in dict.fromkeys(["standard", *trained]):
        lines.append(row(f"{c} ({'trained on' if c in trained else 'measured'})", f"eval/return/{metric_key(c)}"))
    for c in heldout:
        lines.append(row(f"{c} (held out)", f"eval/return/{metric_key(c)}"))
        lines.append(row(f"retention {c}", f"eval/retention/{metric_key(c)}", True))
    lines.append(row("held-out mean", "eval/return/heldout"))
    lines.append(row("**retention, held out**", "eval/retention/heldout", True))
    cost = [
        f"{m}: {len(by[m])} seeds, {_mean_std([float(r['generations']) for r in by[m]])[0]:.0f} generations, "
        f"{_mean_std([r['cpu_s'] / 60 for r in by[m]])[0]:.1f} CPU-min"
        for m in methods
    ]
    return "\n".join(lines) + "\n\n" + "; ".join(cost) + "\n"


def curves_figure(results: list[dict[str, Any]], methods: list[str], path: Path) -> None:
    """Each run's ``eval/return/train`` (its centre on the trained-on bodies) against generations
    and against CPU-minutes (``generation * cpu_s / generations``: a run's generations cost
    alike), one colour per method, one line per seed."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), layout="constrained")
    by_gen, by_cpu = fig.subplots(1, 2, sharey=True)
    colours = {m: f"C{i}" for i, m in enumerate(methods)}
    for r in sorted(results, key=lambda r: (methods.index(r["method"]), r["seed"])):
        if r["status"] != "FINISHED" or not r["curve"]:
            continue
        gens = [g for g, _ in r["curve"]]
        rets = [v for _, v in r["curve"]]
        per_gen = r["cpu_s"] / 60 / max(r["generations"], 1)
        label = r["method"] if r["seed"] == min(x["seed"] for x in results if x["method"] == r["method"]) else None
        by_gen.plot(gens, rets, color=colours[r["method"]], lw=1.2, label=label)
        by_cpu.plot([g * per_gen for g in gens], rets, color=colours[r["method"]], lw=1.2)
    by_gen.set(xlabel="generation", ylabel="return on the trained-on bodies (centre)")
    by_cpu.set(xlabel="training CPU-minutes")
    for ax in (by_gen, by_cpu):
        ax.grid(alpha=0.3)
    by_gen.legend(loc="lower right", fontsize="small")
    fig.suptitle("learning curves, one line per seed")
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--config", default=CONFIG)
    p.add_argument("--method", action="append", default=[], help="NAME=OVERRIDE;OVERRIDE (repeatable)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--minutes", type=float, default=30.0, help="CPU-minutes per run")
    p.add_argument("--procs", type=int, default=2, help="runs at once (one thread each)")
    p.add_argument("--set", dest="extra", action="append", default=[], help="extra config override (repeatable)")
    p.add_argument("--out", default="benchmarks/results/locomotion_comparison")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: sqlite:///<out>/mlflow.db)")
    args = p.parse_args(argv)
    from hybridopt.config import load_config

    methods = dict(METHODS)
    if args.method:
        methods = {}
        for spec in args.method:
            name, _, overrides = spec.partition("=")
            methods[name] = [o for o in overrides.split(";") if o]
    cfg = load_config(args.config, args.extra)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    uri = args.tracking_uri or f"sqlite:///{(out / 'mlflow.db').resolve()}"
    base = {"config": args.config, "extra": args.extra, "minutes": args.minutes, "tracking_uri": uri}
    jobs = [{**base, "method": m, "overrides": o, "seed": s} for m, o in methods.items() for s in args.seeds]
    results = run_jobs(jobs, args.procs, out)
    for r in results:
        if r["status"] != "FINISHED":
            print(f"FAILED {_label(r)}: {r['reason']}", file=sys.stderr)
    trained, heldout = list(cfg.task.train_conditions), list(cfg.task.conditions)
    with open(out / "runs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "seed", "condition", "role", "return", "retention", "generations", "cpu_s"])
        from hybridopt.tasks.conditions import metric_key

        for r in sorted(results, key=lambda r: (r["method"], r["seed"])):
            for c in dict.fromkeys(["standard", *trained, *heldout]):
                role = "trained" if c in trained else "held out" if c in heldout else "measured"
                m = r["metrics"]
                key = metric_key(c)
                w.writerow([r["method"], r["seed"], c, role, m.get(f"eval/return/{key}"),
                            m.get(f"eval/retention/{key}"), r["generations"], round(r["cpu_s"], 1)])  # fmt: skip
    table = markdown(results, list(methods), trained, heldout)
    (out / "table.md").write_text(table)
    curves_figure(results, list(methods), out / "curves.png")
    print(table)
    print(f"the runs are in {uri}: hybridopt report {cfg.experiment} --tracking-uri {uri} draws them side by side")
    return 1 if any(r["status"] != "FINISHED" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
