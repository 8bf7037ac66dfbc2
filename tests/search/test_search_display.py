"""What a search shows: a line per candidate, the figures and summary page of its parent run,
and ``hybridopt report`` on the store it wrote."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.search.searching import runs_of

pytestmark = pytest.mark.slow


def test_a_search_shows_its_candidates_and_ends_with_figures_and_where_to_look(reference, tmp_path: Path):
    d, store = reference
    out = (d / "stdout.txt").read_text()
    client, (parent,), children = runs_of(store)
    # one line per candidate as it stops: generation, number, fitness, status
    lines = [ln for ln in out.splitlines() if ln[:1] == "g" and ln[4:6] == " c"]
    assert len(lines) == len(children), out
    for c in children:
        fit = f"{c.data.metrics['fitness']:.4f}"
        tag = f"g{int(c.data.tags['hybridopt.generation']):03d} c{int(c.data.tags['hybridopt.candidate']):03d}"
        assert any(ln.startswith(tag) and fit in ln and "finished" in ln for ln in lines), (tag, fit)
    assert "starting local Ray with 2 CPUs" in out
    assert f"mlflow ui --backend-store-uri {store}" in out and "checkpoint: " in out
    # the parent's figures and summary page, and its description
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    pngs = sorted(a for a in arts if a.endswith(".png"))
    assert len(pngs) >= 2 and "summary.html" in arts, arts
    for name in pngs:
        assert Path(client.download_artifacts(parent.info.run_id, name, str(tmp_path))).read_bytes()[:4] == b"\x89PNG"
    page = Path(client.download_artifacts(parent.info.run_id, "summary.html", str(tmp_path))).read_text()
    assert page.count("<svg") == 2 and parent.data.tags["hybridopt.best_genome"].split()[0] in page
    assert "Reproduce: `hybridopt search" in parent.data.tags["mlflow.note.content"]
    # the generation curves and the winner's test measure are the only series on the parent
    test = {"test/accuracy", "test/accuracy_se", "test/episodes", "test/chance", "test/observer", "test/observer_se"}
    assert set(parent.data.metrics) == {
        "best_fitness", "mean_fitness", "failed", "cpu_s", "candidates", "candidates_in_generation", "fitness",
        "workers_lost", *test
    }  # fmt: skip
    assert parent.data.metrics["workers_lost"] == 0  # nothing died
    # the search's result, said as such: the test measure beside the selection figure, chance, the observer
    acc = parent.data.metrics["test/accuracy"]
    assert f"test accuracy {acc:.4f} ±" in out and "(selection fitness" in out and "observer reading" in out
    assert "<b>Result</b>: test accuracy" in page
    # hybridopt report: the ranked table from the store alone, and the same figures
    rep = subprocess.run(
        [sys.executable, "-m", "hybridopt", "report", "smoke_search", "--tracking-uri", store,
         "--out", str(tmp_path / "r"), "--csv", str(tmp_path / "t.csv")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert rep.returncode == 0, rep.stderr
    written = sorted(p.name.rsplit("__", 1)[1] for p in (tmp_path / "r").iterdir())
    assert written == sorted([*pngs, "summary.html"])
    import csv

    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert len(rows) == len(children)
    fits = [float(r["fitness"]) for r in rows]
    assert fits == sorted(fits, reverse=True) and fits[0] == pytest.approx(
        max(c.data.metrics["fitness"] for c in children), abs=1e-4
    )
    assert rows[0]["candidate"] in rep.stdout and "genes that differ" in rep.stdout
    assert f"result: test accuracy {acc:.4f} ±" in rep.stdout and "selection fitness" in rep.stdout
    # a name the store does not hold: one line, exit 2
    bad = subprocess.run(
        [sys.executable, "-m", "hybridopt", "report", "no_such_search", "--tracking-uri", store],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "no_such_search" in bad.stderr
