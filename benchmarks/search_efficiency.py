"""Search efficiency at equal compute: best fitness against training CPU seconds, per method.

Same task (cue association, ``configs/cue_association_search.yaml``), same search space, the same
total training budget (``--budget-min`` CPU-minutes) for every method:

``plain_ga``         the GA with every candidate trained from scratch to its full budget
                     (``search.inheritance=none``, ``search.rungs=[1.0]``)
``inherit``          the GA with Lamarckian inheritance (children from their parent's trained state,
                     elites training on), every candidate to its full budget
``inherit_halving``  inheritance and successive halving (``rungs [0.25, 0.5, 1.0]``, ``keep 0.5``)
``single``           the best hand-picked configuration (``configs/cue_association.yaml``) trained
                     alone for the whole budget
``tune_asha``        Ray Tune's own ``Tuner`` with its ASHA scheduler over the same space (random
                     search), each trial the project's training, reported every quarter of a
                     candidate's budget, 1 CPU per trial, ``reuse_actors=True``,
                     ``MLflowLoggerCallback``
``tune_pbt``         Ray Tune's population-based training over the continuous genes (learning rate,
                     membrane decay), the structure fixed to the hand-picked placement; exploit copies
                     the trained state (``TrainState``) through Tune checkpoints

Every method's CPU seconds are its candidates' own training CPU (summed over processes), so
methods that run several candidates at once are not favoured.  Output: one JSON line per
(method, seed) on stdout and in ``OUT/results.jsonl`` with ``method, seed, cpu_s,
best_fitness, nonfinite_fraction, candidates`` and the curve ``[[cpu_s, best_fitness], ...]``;
``OUT/curves.png``; and an MLflow run (experiment ``benchmarks``) with the table and the plot.

    python benchmarks/search_efficiency.py --budget-min 12 --candidate-min 0.5 --seeds 0
    python benchmarks/search_efficiency.py --methods plain_ga,inherit_halving --seeds 0,1,2

Ray Tune is an optional extra (``pip install -e ".[compare]"``); without it the tune methods are
skipped with the reason.  Size: the whole comparison takes about ``methods x budget / cores``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SEARCH = REPO / "configs" / "cue_association_search.yaml"
HANDPICKED = REPO / "configs" / "cue_association.yaml"
METHODS = ("plain_ga", "inherit", "inherit_halving", "single", "tune_asha", "tune_pbt")
POPULATION, ELITE = 6, 2
RUNGS = (0.25, 0.5, 1.0)


# --------------------------------------------------------------------------- the project's own searches
def _generations(method: str, budget: float, cand: float) -> int:
    """How many generations fit the budget (CPU seconds) with candidates of ``cand`` seconds."""
    if method == "plain_ga":
        per_gen, first = (POPULATION - ELITE) * cand, POPULATION * cand
    elif method == "inherit":  # the elites train on too
        per_gen, first = POPULATION * cand, POPULATION * cand
    else:  # halving: rung k runs ceil(keep^k n) candidates for (r_k - r_{k-1}) of a budget
        n, cost, lo = POPULATION, 0.0, 0.0
        for r in RUNGS:
            cost += n * (r - lo) * cand
            n, lo = max(1, math.ceil(0.5 * n)), r
        per_gen = first = cost
    return max(1, 1 + int((budget - first) // per_gen))


def run_search_method(method: str, seed: int, budget: float, cand: float, out: Path, threads_env: dict) -> dict:
    from mlflow.tracking import MlflowClient

    work = out / f"{method}-{seed}"
    work.mkdir(parents=True, exist_ok=True)
    store = f"sqlite:///{work / 'mlflow.db'}"
    gens = _generations(method, budget, cand)
    sets = {
        "search.population": POPULATION,
        "search.elite": ELITE,
        "search.generations": gens,
        "search.checkpoint": str(work / "search.ckpt"),
        "train.cpu_minutes": cand / 60.0,
        "search.inheritance": "none" if method == "plain_ga" else "lamarckian",
        "search.rungs": "[1.0]" if method in ("plain_ga", "inherit") else json.dumps(list(RUNGS)),
        "ray.num_cpus": os.cpu_count() or 2,
    }
    argv = [sys.executable, "-m", "hybridopt", "search", str(SEARCH), "--seed", str(seed), "--fresh"]
    argv += ["--tracking-uri", store]
    for k, v in sets.items():
        argv += ["--set", f"{k}={v}"]
    done = subprocess.run(argv, cwd=work, env=threads_env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{method}: search failed: {done.stderr.strip().splitlines()[-1:]}")
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("cue_association_search")
    runs = client.search_runs([exp.experiment_id], max_results=10000)
    children = [r for r in runs if r.data.tags.get("hybridopt.kind") == "candidate"]
    # the curve: candidates in the order they ended, cumulative training CPU, best fitness so far
    children.sort(key=lambda r: r.info.end_time or 0)
    events = [
        (c.data.metrics.get("cpu_time_s", 0.0), c.data.metrics["fitness"] if c.info.status == "FINISHED" else None)
        for c in children
    ]
    failed = sum(c.info.status == "FAILED" for c in children)
    return _outcome(method, seed, events, failed, len(children), generations=gens)


def _outcome(method: str, seed: int, events: list, failed: int, candidates: int, **extra) -> dict:
    """One result line: ``events`` are ``(cpu_s, fitness or None)`` in the order they happened."""
    curve, cpu, best = [], 0.0, -math.inf
    for c, f in events:
        cpu += c
        if f is not None:
            best = max(best, f)
        curve.append([round(cpu, 1), best if math.isfinite(best) else None])
    return {
        "method": method,
        "seed": seed,
        "cpu_s": round(cpu, 1),
        "best_fitness": best,
        "nonfinite_fraction": failed / max(1, candidates),
        "candidates": candidates,
        **extra,
        "curve": curve,
    }


def run_single(seed: int, budget: float, out: Path) -> dict:
    from hybridopt.config import load_config
    from hybridopt.train.gradient import train_gradient

    cfg = load_config(HANDPICKED, [f"seed={seed}", "train.steps=1000000", "train.eval_every=100"])
    r = train_gradient(cfg, cpu_budget_s=budget)
    total = max(1, r.steps)
    curve, best = [], -math.inf
    for step, m in r.history:
        if "eval/accuracy" in m:
            best = max(best, m["eval/accuracy"])
            curve.append([round(r.cpu_time * step / total, 1), best])
    return {
        "method": "single",
        "seed": seed,
        "cpu_s": round(r.cpu_time, 1),
        "best_fitness": best,
        "nonfinite_fraction": float(r.failed),
        "candidates": 1,
        "curve": curve,
    }


# --------------------------------------------------------------------------- Ray Tune, the real peer
def _trial_config(base: dict, genes: dict) -> dict:
    """The project's config for a Tune trial: the base config with the genes set."""
    from hybridopt.config import parse_config, set_path

    raw = json.loads(json.dumps(base))
    for path, value in genes.items():
        set_path(raw, path, value)
    return parse_config(raw).model_dump(mode="json")


def _tune_trainable(config: dict) -> None:
    """One trial: the project's training in quarters of a candidate's budget, continuing from its
    own state (or, under PBT, from the state Tune copied in), reporting after each."""
    import pickle

    import torch  # noqa: F401 - loaded before the checkpoint is read
    from ray import tune

    from hybridopt.config import parse_config
    from hybridopt.train.gradient import train_gradient

    cfg = parse_config(_trial_config(config["base"], {k: v for k, v in config.items() if k != "base"}))
    state, cpu = None, 0.0
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = pickle.loads((Path(d) / "state.pkl").read_bytes())
        state = state.fresh_optimizer() if state is not None else None  # a new lr: Adam starts anew
    chunk = 60.0 * cfg.train.cpu_minutes / 4
    while True:
        r = train_gradient(cfg, start=state, cpu_budget_s=chunk)
        cpu += r.cpu_time
        metrics = {"fitness": r.fitness if not r.failed else -1.0, "cpu_s": r.cpu_time, "failed": float(r.failed)}
        if r.failed:
            tune.report(metrics)
            return
        state = r.state
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "state.pkl").write_bytes(pickle.dumps(state))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def run_tune(method: str, seed: int, budget: float, cand: float, out: Path) -> dict:
    import ray
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining

    from hybridopt.config import load_config

    work = out / f"{method}-{seed}"
    work.mkdir(parents=True, exist_ok=True)
    if method == "tune_asha":
        base = load_config(SEARCH, [f"seed={seed}", "train.eval_every=1000000", f"train.cpu_minutes={cand / 60.0}"])
        space: dict[str, Any] = {}
        for path, g in base.search.genes.items():
            if g.choices is not None:
                space[path] = tune.choice(list(g.choices))
            elif g.log:
                space[path] = tune.loguniform(g.low, g.high)
            else:
                space[path] = tune.uniform(g.low, g.high)
        # ASHA costs about 1.5 quarters of a candidate per trial (grace 1 of 4, halving by 2)
        samples = max(2, int(budget / (cand * 0.4)))
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=4, grace_period=1, reduction_factor=2)
    else:
        base = load_config(HANDPICKED, [f"seed={seed}", "train.eval_every=1000000", f"train.cpu_minutes={cand / 60.0}"])
        space = {"train.lr": tune.loguniform(1e-3, 1e-2), "network.beta": tune.uniform(0.8, 0.97)}
        samples = 4
        scheduler = PopulationBasedTraining(
            time_attr="training_iteration",
            perturbation_interval=2,
            hyperparam_mutations={"train.lr": tune.loguniform(1e-3, 1e-2), "network.beta": tune.uniform(0.8, 0.97)},
        )
    raw = base.model_dump(mode="json")
    raw["search"] = None
    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        # stop the whole experiment once the training budget is spent (PBT trials run until then)
        spent = {"cpu": 0.0}

        class Budget(tune.Stopper):
            def __call__(self, trial_id, result):  # no single trial is stopped here (the scheduler does that)
                spent["cpu"] += result.get("cpu_s", 0.0)
                return False

            def stop_all(self):
                return spent["cpu"] >= budget

        mlflow_cb = MLflowLoggerCallback(tracking_uri=f"sqlite:///{work / 'mlflow.db'}", experiment_name=method)

        tuner = tune.Tuner(
            tune.with_resources(_tune_trainable, {"cpu": 1}),
            param_space={"base": raw, **space},
            tune_config=tune.TuneConfig(
                metric="fitness", mode="max", scheduler=scheduler, num_samples=samples, reuse_actors=True
            ),
            run_config=tune.RunConfig(
                name=method,
                storage_path=str(work / "tune"),
                stop=Budget(),
                # PBT changes a running trial's hyper-parameters, which Tune's MLflow callback then
                # tries to log again into the same run: MLflow refuses ("Changing param values is not
                # allowed") and the experiment dies.  PBT runs without it.
                callbacks=[mlflow_cb] if method == "tune_asha" else [],
                verbose=0,
            ),
        )
        grid = tuner.fit()
    finally:
        ray.shutdown()
    events = []
    failed = 0
    for res in grid:
        df = res.metrics_dataframe
        if df is None or df.empty:
            continue
        failed += int(df["failed"].max() > 0)
        for _, row in df.iterrows():
            events.append((float(row["timestamp"]), float(row["cpu_s"]), float(row["fitness"])))
    events.sort()
    return _outcome(method, seed, [(c, f) for _, c, f in events], failed, len(grid))


# --------------------------------------------------------------------------- output
def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        pts = [(c / 60.0, f) for c, f in r["curve"] if f is not None]
        if pts:
            ax.step(*zip(*pts), where="post", label=f"{r['method']} (seed {r['seed']})")
    ax.set_xlabel("training CPU-minutes")
    ax.set_ylabel("best eval accuracy so far")
    ax.set_title("Cue association: best fitness against compute")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-min", type=float, default=12.0, help="training CPU-minutes per method and seed")
    ap.add_argument("--candidate-min", type=float, default=0.5, help="a candidate's full budget, CPU-minutes")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "search_efficiency"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget, cand = 60.0 * args.budget_min, 60.0 * args.candidate_min
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    results = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for method in args.methods.split(","):
            t0 = time.time()
            try:
                if method == "single":
                    r = run_single(seed, budget, out)
                elif method.startswith("tune_"):
                    try:
                        import ray.tune  # noqa: F401
                    except ImportError as e:
                        print(f"skip {method}: Ray Tune is not installed ({e}); pip install -e '.[compare]'")
                        continue
                    r = run_tune(method, seed, budget, cand, out)
                else:
                    r = run_search_method(method, seed, budget, cand, out, env)
            except Exception as e:  # noqa: BLE001 - one method failing does not lose the others
                r = {"method": method, "seed": seed, "error": f"{type(e).__name__}: {e}"}
            r["wall_s"] = round(time.time() - t0, 1)
            results.append(r)
            line = json.dumps(r)
            print(line, flush=True)
            with open(out / "results.jsonl", "a") as f:
                f.write(line + "\n")
    ok = [r for r in results if "curve" in r]
    plot(ok, out / "curves.png")
    try:
        from hybridopt.tracking import Tracker

        tracker = Tracker(f"sqlite:///{out / 'mlflow.db'}", "benchmarks")
        run = tracker.start_run("search_efficiency", "benchmark", params=vars(args))
        for r in ok:
            tracker.log_metrics(run, {f"{r['method']}/seed{r['seed']}/best_fitness": r["best_fitness"]})
        tracker.log_artifact_file(run, out / "curves.png")
        tracker.log_artifact_file(run, out / "results.jsonl")
        tracker.end_run(run)
    except Exception as e:  # noqa: BLE001 - the figures are on stdout and on disk anyway
        print(f"(not logged to MLflow: {e})", file=sys.stderr)
    print("\n| method | seed | CPU-min | best eval accuracy | non-finite | candidates |")
    print("|---|---|---|---|---|---|")
    for r in ok:
        print(
            f"| {r['method']} | {r['seed']} | {r['cpu_s'] / 60:.1f} | {r['best_fitness']:.3f} | "
            f"{r['nonfinite_fraction']:.0%} | {r['candidates']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
