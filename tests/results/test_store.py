"""A search as the store gives it back: each candidate's rule family per projection, a bundle
gene's included, and the figures that group candidates by it."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridopt.config import parse_config
from hybridopt.results import plots
from hybridopt.results.store import find
from hybridopt.search.genome import GenomeSpace
from hybridopt.search.record import SearchRecord
from hybridopt.tracking import Tracker
from tests.search.searching import smoke_raw

# the readout's rule is set only by a bundle: no gene names plasticity.readout.rule
GENES = {
    "plasticity.input.rule": {"choices": ["hebbian", "oja"]},
    "readout_learning": {
        "choices": {
            "static": {"plasticity.readout.rule": "none"},
            "error_gated": {"plasticity.readout.rule": "abcd", "plasticity.readout.modulator_gate": True},
        }
    },
}
GENOMES = [  # (genome, fitness)
    ({"plasticity.input.rule": "hebbian", "readout_learning": "static"}, 0.5),
    ({"plasticity.input.rule": "oja", "readout_learning": "error_gated"}, 0.9),
    ({"plasticity.input.rule": "oja", "readout_learning": "static"}, 0.6),
]


@pytest.fixture
def stored(tmp_path: Path):
    """A search's parent and three finished children in a real SQLite MLflow store, written by
    the search's own record from configs the genome space made."""
    raw = smoke_raw()
    raw["search"]["genes"] = GENES
    base = parse_config(raw)
    space = GenomeSpace.from_config(base.search)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "bundled")
    record = SearchRecord.start(tracker, base, "three candidates", None)
    for i, (genome, fitness) in enumerate(GENOMES):
        run = record.open_child(0, i, space.encode(genome), genome, space.config_for(base, genome))
        tracker.end_run(run, history=[(0, {"fitness": fitness})])
    return uri


def test_a_bundle_set_rule_is_read_from_the_candidates_config_and_drawn(stored: str):
    (view,) = find(stored, "bundled")
    by_fitness = {c.fitness: c for c in view.candidates}
    assert [view.rule(by_fitness[f], "input") for _, f in GENOMES] == ["hebbian", "oja", "oja"]
    assert [view.rule(by_fitness[f], "readout") for _, f in GENOMES] == ["none", "abcd", "none"]
    # the readout is searched (its family varies), though no gene names its rule's path
    assert view.searched_projections == ["input", "readout"]
    fig = plots.fitness_by_family(view)
    readout = fig.axes[1]
    assert readout.get_title() == "readout: fitness by family"
    assert [t.get_text() for t in readout.get_xticklabels()] == ["abcd\n(n=1)", "none\n(n=2)"]
    legend = plots.candidates_by_family(view).axes[1].get_legend()
    assert sorted(t.get_text() for t in legend.get_texts()) == ["abcd", "none"]
