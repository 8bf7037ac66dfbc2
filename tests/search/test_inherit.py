"""Lamarckian inheritance: what a child keeps of its parent's trained state, and whose."""

import random

import pytest
import torch

from hybridopt.config import load_config
from hybridopt.search.genome import GenomeSpace
from hybridopt.search.inherit import Lineage, inherit, parameter_owner
from hybridopt.stored_names import CandidateRecord
from hybridopt.train import initial_model
from hybridopt.train.gradient import train_gradient
from tests.conftest import CONFIGS


def smoke(*overrides):
    return load_config(CONFIGS / "smoke.yaml", ["train.steps=2", *overrides])


@pytest.fixture(scope="module")
def parent():
    cfg = smoke("plasticity.recurrent.rule=stdp", "plasticity.recurrent.modulation=plain")
    return cfg, train_gradient(cfg)


def test_owners():
    assert parameter_owner("b_hidden") == parameter_owner("projections.input.W") == "weights"
    assert parameter_owner("obs_norm.mean") == "weights"
    assert parameter_owner("projections.input.alpha") == "input.plasticity"
    assert parameter_owner("projections.recurrent.coeffs.a_plus") == "recurrent.plasticity"
    assert parameter_owner("projections.readout.w_M") == "readout.plasticity"


def test_a_child_keeps_what_still_means_the_same(parent):
    pcfg, trained = parent
    # the input projection keeps its family and mode, the recurrent one changes family
    ccfg = smoke("plasticity.recurrent.rule=hebbian", "plasticity.recurrent.modulation=plain", "train.lr=0.01")
    state, kept = inherit(trained.state, pcfg, ccfg)
    assert kept == ["weights", "input.plasticity"]
    fresh = initial_model(ccfg)
    assert state.model.keys() == fresh.keys()
    for name, v in state.model.items():
        owner = parameter_owner(name)
        src = trained.state.model[name] if owner in kept else fresh[name]
        assert torch.equal(v, src), name
    # trained entries really differ from a fresh start, so the test can tell them apart
    assert not torch.equal(state.model["projections.input.alpha"], fresh["projections.input.alpha"])
    assert not torch.equal(trained.state.model["projections.recurrent.alpha"], fresh["projections.recurrent.alpha"])
    # its curves go on from the parent's step, its budget counts the parent's; a new optimiser
    assert state.step == 2 and state.cpu_s == trained.state.cpu_s and state.optimizer is None
    child = train_gradient(ccfg, start=state)
    assert [s for s, _ in child.history] == [3, 4] and child.state.cpu_s > trained.state.cpu_s


def test_a_changed_shape_or_mode_starts_fresh(parent):
    pcfg, trained = parent
    ccfg = smoke("network.hidden=12", "plasticity.input.modulation=plain", "plasticity.recurrent.rule=stdp")
    state, kept = inherit(trained.state, pcfg, ccfg)
    fresh = initial_model(ccfg)
    assert "input.plasticity" not in kept  # mode changed
    assert torch.equal(state.model["projections.input.alpha"], fresh["projections.input.alpha"])
    # same family and mode on the recurrent projection, hidden 16 -> 12: what changed shape is fresh,
    # the rule's scalar coefficients are kept
    assert torch.equal(state.model["projections.recurrent.W"], fresh["projections.recurrent.W"])
    assert torch.equal(state.model["projections.recurrent.alpha"], fresh["projections.recurrent.alpha"])
    for c in ("a_plus", "a_minus"):
        name = f"projections.recurrent.coeffs.{c}"
        assert torch.equal(state.model[name], trained.state.model[name])
    assert torch.equal(state.model["b_out"], trained.state.model["b_out"])  # same name and shape: kept
    assert kept == ["weights", "recurrent.plasticity"]


def test_the_same_config_continues_with_its_optimiser(parent):
    pcfg, trained = parent
    state, kept = inherit(trained.state, pcfg, pcfg)
    assert state.optimizer is trained.state.optimizer and state.rng is trained.state.rng
    assert kept == ["weights", "input.plasticity", "recurrent.plasticity"]


def test_a_child_s_parent_shares_most_genes_then_is_nearest_then_first():
    """Against the rule written plainly, over populations full of ties (few distinct values)."""
    genes = GenomeSpace.from_config(load_config(CONFIGS / "smoke_search.yaml").search).genes
    rng = random.Random(0)

    def draw() -> tuple[list[float], dict]:
        unit = [rng.choice([0.05, 0.5, 0.95, rng.random()]) for _ in genes]
        return unit, {g.path: g.decode(u) for g, u in zip(genes, unit)}

    def plainly(members, unit, genome):
        best, key = None, None
        for _, m in members:
            if m.status == "FINISHED":
                k = (
                    -sum(genome[g.path] == m.genome[g.path] for g in genes),
                    sum(abs(a - b) for a, b in zip(unit, m.unit)),
                )
                if key is None or k < key:
                    best, key = m, k
        return best

    for _ in range(300):
        lineage = Lineage(genes, lambda run_id: None)
        members = []
        for i in range(rng.randint(0, 25)):
            unit, genome = draw()
            status = rng.choice(["FINISHED", "FINISHED", "FAILED"])
            members.append((i, CandidateRecord(f"run{i}", 0, i, unit, genome, status)))
        lineage.members = members
        for _ in range(5):
            unit, genome = draw()
            assert lineage.parent_of(unit, genome) is plainly(members, unit, genome)
