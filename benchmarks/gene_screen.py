"""Which of a genome's categorical genes its result needs: one gene changed at a time.

A search config's genome (``--genome``, the JSON a child run's ``hybridopt.genome`` tag holds,
e.g. a search's winner) is trained from scratch with ``hybridopt train`` for ``--cpu-minutes``,
then again with each categorical gene (bundles included) set to each of its other values, the
rest held.  Each run is measured as ``train`` measures it: eval accuracy on its own evaluation
episodes and test accuracy on fresh episodes from the seeds reserved for testing, with its
standard error.  A gene whose every other value drops the result to chance is necessary where the
genome stands; the product over such genes of (working values / values) is the share of random
genomes that have them all, what a search's first draw must hit.

    python -m benchmarks.gene_screen configs/cue_association_noisy_pools_search.yaml \\
        --genome '{"network.pools_read_shared": true, ...}' --cpu-minutes 2 --seed 5 --out screen/

Each run writes its own SQLite store under ``--out``; ``--jobs`` runs train side by side.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from hybridopt.config import load_config
from hybridopt.search.genome import GenomeSpace


def variants(
    space: GenomeSpace, genome: dict[str, Any], only: list[str] | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """The genome itself, then each categorical gene (of ``only``, if given) set to each of its
    other values."""
    out: list[tuple[str, dict[str, Any]]] = [("as given", {})]
    for gene in space.genes:
        if gene.categorical and (only is None or gene.path in only):
            out += [(f"{gene.path}={json.dumps(v)}", {gene.path: v}) for v in gene.choices if v != genome[gene.path]]
    return out


def _metrics(db: Path) -> dict[str, float]:
    with sqlite3.connect(db) as c:
        return dict(c.execute("select key, value from latest_metrics").fetchall())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="a search config (its genes and the config they act on)")
    ap.add_argument("--genome", required=True, help="the genome, as JSON: every gene's value")
    ap.add_argument("--cpu-minutes", type=float, default=2.0, help="training CPU per run")
    ap.add_argument("--seed", type=int, default=5, help="the runs' seed (one the search did not use)")
    ap.add_argument("--jobs", type=int, default=2, help="runs side by side (one thread each)")
    ap.add_argument("--genes", nargs="*", help="change only these genes (default: every categorical one)")
    ap.add_argument("--out", type=Path, default=Path("gene_screen"))
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    assert cfg.search is not None, "a search config"
    space = GenomeSpace.from_config(cfg.search)
    genome = json.loads(args.genome)
    if missing := sorted({g.path for g in space.genes} - set(genome)):
        ap.error(f"--genome lacks {', '.join(missing)}")
    if unknown := sorted(set(args.genes or ()) - {g.path for g in space.genes}):
        ap.error(f"--genes: not genes of {args.config}: {', '.join(unknown)}")
    args.out.mkdir(parents=True, exist_ok=True)

    def run(item: tuple[int, tuple[str, dict[str, Any]]]) -> str:
        i, (name, change) = item
        raw = space.config_for(cfg, {**genome, **change}).model_dump(mode="json")
        raw.pop("search", None)
        raw["train"].update(cpu_minutes=args.cpu_minutes, threads=1)
        raw["experiment"] = "gene_screen"
        path, db = args.out / f"v{i:02d}.yaml", args.out / f"v{i:02d}.db"
        path.write_text(yaml.safe_dump(raw))
        cmd = [sys.executable, "-m", "hybridopt", "train", str(path), "--seed", str(args.seed)]
        p = subprocess.run([*cmd, "--tracking-uri", f"sqlite:///{db.resolve()}"], capture_output=True, text=True)
        if p.returncode:
            return f"{name:50s} failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}"
        m = {k: _metrics(db).get(k, float("nan")) for k in ("eval/accuracy", "test/accuracy", "test/accuracy_se")}
        return f"{name:50s} eval {m['eval/accuracy']:.3f}  test {m['test/accuracy']:.3f} ± {m['test/accuracy_se']:.3f}"

    print(f"{args.config}: {args.cpu_minutes:g} CPU-minutes a run, seed {args.seed}", flush=True)
    with cf.ThreadPoolExecutor(args.jobs) as ex:
        for line in ex.map(run, enumerate(variants(space, genome, args.genes))):
            print(line, flush=True)


if __name__ == "__main__":
    main()
