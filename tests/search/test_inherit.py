"""Lamarckian inheritance: what a child keeps of its parent's trained state, and whose."""

import random

import pytest
import torch

from hybridopt.config import load_config
from hybridopt.search.genome import Gene, GenomeSpace
from hybridopt.search.halving import Job
from hybridopt.search.inherit import Lineage, _start, inherit, initial_value_gene, lineage_genes, parameter_owner
from hybridopt.search.outcome import describe_search
from hybridopt.stored_names import CandidateRecord, candidate_tags, decode_candidate
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


def test_initial_value_genes_are_named_by_their_field():
    assert initial_value_gene("plasticity.input.alpha_init")
    assert initial_value_gene("plasticity.readout.eta_init") and initial_value_gene("plasticity.recurrent.eta_E_init")
    assert initial_value_gene("plasticity.recurrent.coefficients.tau_phi")
    for path in ("plasticity.input.h_max", "plasticity.input.rule", "network.input_gain", "train.lr", "alpha_init"):
        assert not initial_value_gene(path), path


ALPHA = "plasticity.input.alpha_init"


def _genes(*paths: str) -> list[Gene]:
    return [Gene(path=p, low=0.01, high=1.0, log=True) for p in paths]


def _config_for(genome: dict) -> object:
    return smoke(*(f"{k}={v}" for k, v in genome.items()))


def test_a_gene_is_the_lineage_s_only_where_all_it_sets_was_inherited(parent):
    pcfg, trained = parent
    genes = _genes(ALPHA, "plasticity.recurrent.alpha_init", "train.lr")
    genome = {ALPHA: 0.7, "plasticity.recurrent.alpha_init": 0.2, "train.lr": 0.01}
    # the input projection keeps its family and mode: its alpha is the parent's, so its alpha_init
    # no longer acts; the recurrent projection is static here (its alpha_init sets nothing), and a
    # learning rate sets no initial value
    _, _, fresh, copied = _start(trained.state, pcfg, _config_for(genome))
    assert lineage_genes(genes, genome, fresh, copied, _config_for) == [ALPHA]
    # another mode on the input projection: its alpha starts from the child's own value
    changed = {**genome, "plasticity.input.modulation": "plain"}
    _, _, fresh, copied = _start(trained.state, pcfg, _config_for(changed))
    assert lineage_genes(genes, changed, fresh, copied, _config_for) == []
    # another hidden size: alpha's shape changed, nothing of it was inherited
    resized = {**genome, "network.hidden": 12}
    _, _, fresh, copied = _start(trained.state, pcfg, _config_for(resized))
    assert lineage_genes(genes, resized, fresh, copied, _config_for) == []


def test_a_child_records_its_lineage_s_initial_values(parent):
    pcfg, trained = parent
    genes = _genes(ALPHA, "train.lr")
    root = CandidateRecord("root", 0, 0, [0.5, 0.5], {ALPHA: 0.036, "train.lr": 0.003}, "FINISHED")
    lineage = Lineage(genes, lambda run_id: trained.state if run_id == "root" else None)
    lineage.members = [(0, root)]
    job = lineage.child(Job(0, [0.9, 0.4], {ALPHA: 1.0, "train.lr": 0.002}, _config_for({ALPHA: 1.0})), _config_for)
    assert job.inherited_from == "root" and job.lineage_genes == (ALPHA,)
    assert job.genome == {ALPHA: 0.036, "train.lr": 0.002}  # the GA's own value of the other gene stays
    assert job.cfg.plasticity.input.alpha_init == 0.036 and job.cfg.train.lr == 0.002
    assert job.unit == [0.9, 0.4]  # the GA's row is untouched: its record still finds it
    assert torch.equal(job.start.model["projections.input.alpha"], trained.state.model["projections.input.alpha"])
    # a child of another mode trains its own alpha from its own value
    other = {ALPHA: 1.0, "train.lr": 0.002, "plasticity.input.modulation": "plain"}
    job = lineage.child(Job(1, [0.9, 0.4], dict(other), _config_for(other)), _config_for)
    assert job.inherited_from == "root" and job.lineage_genes == () and job.genome[ALPHA] == 1.0
    assert bool((job.start.model["projections.input.alpha"] == 1.0).all())


def test_lineage_genes_go_to_the_store_and_back():
    tags = candidate_tags(1, 2, [0.5], {ALPHA: 0.036}, "root", ["weights", "input.plasticity"], [ALPHA])
    assert tags["hybridopt.lineage_genes"] == ALPHA
    rec = decode_candidate("r", "FINISHED", tags, {"fitness": 0.5})
    assert rec.lineage_genes == (ALPHA,) and rec.inherited == ("weights", "input.plasticity")
    assert "hybridopt.lineage_genes" not in candidate_tags(1, 2, [0.5], {ALPHA: 0.036}, "root", ["weights"])


def test_the_search_s_description_names_the_winner_s_lineage_genes():
    cfg = load_config(CONFIGS / "smoke_search.yaml")
    space = GenomeSpace.from_config(cfg.search)
    best = CandidateRecord("r", 1, 0, [0.5], {ALPHA: 0.036}, "FINISHED", fitness=0.6)
    assert "lineage" not in describe_search(cfg, space, None, best)
    best.lineage_genes = (ALPHA,)
    assert f"Its `{ALPHA}`: the initial values its lineage started from" in describe_search(cfg, space, None, best)
