"""What a trained locomotion policy's plasticity does: each run of a comparison re-measured on
fresh episodes with its plasticity running, and again with it switched off.

A plastic projection's effective weights are ``W_eff(t) = W + alpha ⊙ H(t)`` with ``H(0) = 0``;
switching the plasticity off sets ``alpha = 0``, so the policy plays on its weights ``W`` alone
(what it would be without any change within the episode).  Per run and condition ``c``::

    R_c^on, R_c^off       mean return over the fresh episodes, plasticity on / off
    gain_c = R_c^on - R_c^off   what the plasticity adds in that body

A policy that adapts to its body through its plasticity loses return without it, and loses more
on the bodies that need adapting; one that only carries a fixed perturbation (or none) does not
care.  Static runs (no plastic projection) are re-measured once, their two columns equal.

The runs are those ``benchmarks.locomotion_comparison`` left under ``--out`` (``runs/*.json``,
their weights in its MLflow store).  Fresh episodes: ``--episodes`` per condition, seeded from
``--seed-offset + seed`` (default 900 + the run's seed), which no training or evaluation of the
comparison played.  Writes a markdown table (mean ± std over seeds) to stdout and
``ablation.md``, one row per run and condition in ``ablation.csv``, under ``--out``.

    python -m benchmarks.plasticity_ablation --out benchmarks/results/locomotion_comparison
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.locomotion_comparison import _mean_std


def switch_off_plasticity(net: torch.nn.Module) -> int:
    """Set every plastic projection's ``alpha`` to 0 in place (``W_eff = W``); returns how many."""
    n = 0
    with torch.no_grad():
        for proj in net.projections.values():
            if getattr(proj, "alpha", None) is not None:
                proj.alpha.zero_()
                n += 1
    return n


def measure(
    run: dict[str, Any], episodes: int, seed_offset: int, folder: Path
) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """``{"on": {condition: return}, "off": ...}`` for one run, on fresh episodes, and each
    condition's role (trained on, held out, measured) in the run's config."""
    from hybridopt.stored_names import ARTIFACT_WEIGHTS
    from hybridopt.tasks.conditions import metric_key
    from hybridopt.tracking import store_client
    from hybridopt.train.policy_eval import evaluate_policy
    from hybridopt.train.weights import load_trained

    path = store_client(run["tracking_uri"]).download_artifacts(run["run_id"], ARTIFACT_WEIGHTS, str(folder))
    cfg, loaded = load_trained(path)
    task, net, normalizer = loaded
    task.cfg = task.cfg.model_copy(update={"eval_seeds": episodes})
    names = list(dict.fromkeys(["standard", *task.cfg.train_conditions, *task.cfg.conditions]))
    roles = {c: "trained on" if c in task.cfg.train_conditions else "held out" if c in task.cfg.conditions
             else "measured" for c in names}  # fmt: skip
    seed = seed_offset + cfg.seed
    out: dict[str, dict[str, float]] = {}
    for mode in ("on", "off"):
        if mode == "off" and switch_off_plasticity(net) == 0:
            out["off"] = dict(out["on"])
            break
        m = evaluate_policy(task, net, normalizer, seed)
        out[mode] = {c: m[f"eval/return/{metric_key(c)}"] for c in names}
    return out, roles


def _cell(xs: list[float]) -> str:
    m, s = _mean_std(xs)
    return f"{m:.0f} ± {s:.0f}" if math.isfinite(m) else "—"


def markdown(rows: list[dict[str, Any]]) -> str:
    """Per method and condition: return with the plasticity on, off, and their difference."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    roles = {r["condition"]: r["role"] for r in rows}
    conditions = list(roles)
    head = "| condition | " + " | ".join(f"{m} on | {m} off | {m} gain" for m in methods) + " |"
    lines = [head, "|---|" + "---:|" * (3 * len(methods))]
    for c in conditions:
        cells = []
        for m in methods:
            rs = [r for r in rows if r["method"] == m and r["condition"] == c]
            cells += [
                _cell([r["on"] for r in rs]),
                _cell([r["off"] for r in rs]),
                _cell([r["on"] - r["off"] for r in rs]),
            ]
        lines.append(f"| {c} ({roles[c]}) | " + " | ".join(cells) + " |")
    held = [c for c in conditions if roles[c] == "held out"]
    if held:
        cells = []
        for m in methods:
            per_seed = {}
            for r in rows:
                if r["method"] == m and r["condition"] in held:
                    per_seed.setdefault(r["seed"], []).append((r["on"], r["off"]))
            on = [statistics.fmean(x for x, _ in v) for v in per_seed.values()]
            off = [statistics.fmean(y for _, y in v) for v in per_seed.values()]
            cells += [_cell(on), _cell(off), _cell([a - b for a, b in zip(on, off)])]
        lines.append("| held-out mean | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--out", default="benchmarks/results/locomotion_comparison", help="a comparison's --out")
    p.add_argument("--episodes", type=int, default=20, help="fresh episodes per condition")
    p.add_argument("--seed-offset", type=int, default=900)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    runs = [json.loads(f.read_text()) for f in sorted((out / "runs").glob("*.json"))]
    runs = [r for r in runs if r["status"] == "FINISHED"]
    if not runs:
        print(f"no finished runs under {out / 'runs'}", file=sys.stderr)
        return 2
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, run in enumerate(runs):
            res, run_roles = measure(run, args.episodes, args.seed_offset, Path(tmp) / str(i))
            for c in res["on"]:
                rows.append({"method": run["method"], "seed": run["seed"], "condition": c, "role": run_roles[c],
                             "on": res["on"][c], "off": res["off"][c]})  # fmt: skip
            print(f"{run['method']} seed {run['seed']}: " + ", ".join(
                f"{c} {res['on'][c]:.0f} / {res['off'][c]:.0f}" for c in res["on"]), flush=True)  # fmt: skip
    with open(out / "ablation.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["method", "seed", "condition", "role", "on", "off"])
        w.writeheader()
        w.writerows(rows)
    table = markdown(rows)
    (out / "ablation.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
