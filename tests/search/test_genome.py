import json
import math

import pytest
import torch
import yaml

from hybridopt.config import ConfigError, load_config, parse_config
from hybridopt.search.checkpoint import SearchCheckpoint
from hybridopt.search.evolution import Evolution
from hybridopt.search.genome import Gene, GenomeSpace
from hybridopt.stored_names import TAG_CANDIDATE, TAG_GENERATION, TAG_INHERITED_FROM
from tests.conftest import CONFIGS
from tests.search.searching import runs_of, search, smoke_raw


def test_categorical_cells_and_encoding_at_cell_centres():
    g = Gene("plasticity.input.rule", choices=("none", "hebbian", "oja", "bcm", "stdp"))
    assert [g.decode(u) for u in (0.0, 0.19, 0.2, 0.59, 0.999, 1.0)] == [
        "none",
        "none",
        "hebbian",
        "oja",
        "stdp",
        "stdp",
    ]
    assert g.encode("oja") == pytest.approx(0.5)
    assert g.encode("none") == pytest.approx(0.1)
    with pytest.raises(ValueError):
        g.encode("hebb")


def test_log_and_integer_genes():
    lr = Gene("train.lr", low=1e-4, high=1e-2, log=True)
    assert lr.decode(0.0) == pytest.approx(1e-4) and lr.decode(1.0) == pytest.approx(1e-2)
    assert lr.decode(0.5) == pytest.approx(1e-3)  # geometric midpoint
    assert lr.encode(1e-3) == pytest.approx(0.5)
    hidden = Gene("network.hidden", low=16, high=128, integer=True)
    assert hidden.decode(0.5) == 72 and isinstance(hidden.decode(0.3), int)
    assert hidden.decode(-1.0) == 16 and hidden.decode(2.0) == 128  # clamped


def test_genome_round_trips_to_the_config_that_trains_it():
    cfg = load_config(CONFIGS / "smoke_search.yaml")
    space = GenomeSpace.from_config(cfg.search)
    values = space.decode([0.3, 0.9, 0.05, 0.5, 0.5, 0.0])
    assert values["plasticity.input.rule"] == "hebbian"
    assert values["plasticity.input.modulation"] == "retroactive"
    assert values["plasticity.recurrent.rule"] == "none"
    assert space.decode(space.encode(values)) == values
    cand = space.config_for(cfg, values)
    assert cand.search is None
    assert cand.plasticity.input.rule == "hebbian" and cand.plasticity.input.modulation == "retroactive"
    assert cand.train.lr == pytest.approx(values["train.lr"]) and cand.network.hidden == values["network.hidden"]
    short = GenomeSpace.describe(values).split()
    assert short[:2] == ["input=hebbian/retroactive", "recurrent=none"]  # a rule with its mode; static alone
    assert f"hidden={values['network.hidden']}" in short


def test_validate_rejects_a_gene_outside_the_config():
    base = {"task": {"name": "cue_association"}}
    bad = parse_config(
        {**base, "search": {"population": 4, "elite": 2, "genes": {"network.hiden": {"low": 1, "high": 2}}}}
    )
    with pytest.raises(ConfigError, match="search.genes.network.hiden"):
        GenomeSpace.from_config(bad.search).validate(bad)
    out_of_range = parse_config(
        {**base, "search": {"population": 4, "elite": 2, "genes": {"network.beta": {"low": 0.5, "high": 1.5}}}}
    )
    with pytest.raises(ConfigError, match="network.beta"):
        GenomeSpace.from_config(out_of_range.search).validate(out_of_range)


def test_population_minus_elite_must_be_even():
    with pytest.raises(ConfigError, match="even"):
        parse_config({"task": {"name": "cue_association"}, "search": {"population": 5, "elite": 2, "genes": {}}})


def _genomes(seed: int, gens: int = 3):
    cfg = load_config(CONFIGS / "smoke_search.yaml")
    space = GenomeSpace.from_config(cfg.search)
    seen, best = [], []

    def fitness(v):  # a cheap deterministic fitness: distance to a fixed point
        seen.append(v.clone())
        return -(v - 0.3).pow(2).sum(1)

    evolution = Evolution(space, cfg.search, seed, fitness)
    evolution.measure_initial()
    for _ in range(gens):
        evolution.step()
        best.append(float(evolution.fitness.max()))
    return torch.cat(seen), best


def test_same_seed_same_sequence_of_genomes_and_elitism_keeps_the_best():
    a, best_a = _genomes(0)
    b, _ = _genomes(0)
    c, _ = _genomes(1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == (4 + 3 * 2, 6)  # population, then (population - elite) children per generation
    assert all(x <= y for x, y in zip(best_a, best_a[1:]))
    assert all(0.0 <= v <= 1.0 for v in a.flatten().tolist()) and not any(math.isnan(v) for v in a.flatten())


def test_a_wider_first_draw_measures_every_genome_and_keeps_the_fittest_population():
    cfg = parse_config({**smoke_raw(), "search": {**smoke_raw()["search"], "initial_population": 7}})
    space = GenomeSpace.from_config(cfg.search)
    measured: list[torch.Tensor] = []

    def fitness(v):  # distance to a fixed point, with a tie between the last two rows
        measured.append(v.clone())
        f = -(v - 0.3).pow(2).sum(1)
        f[-1] = f[-2] = f.max() + 1.0
        return f

    evolution = Evolution(space, cfg.search, 3, fitness)
    drawn = evolution.population.clone()
    evolution.measure_initial()
    (values,) = measured
    assert values.shape == (7, len(space)) and torch.equal(values[:4], drawn)  # the GA's own four first
    f = fitness(values.clone())
    order = sorted(range(7), key=lambda r: (-float(f[r]), r))[:4]
    assert order[:2] == [5, 6]  # the tie: the first drawn first
    assert torch.equal(evolution.population, values[order]) and torch.equal(evolution.fitness, f[order])
    again = Evolution(space, cfg.search, 3, fitness)
    measured[:] = []
    again.measure_initial()
    assert torch.equal(measured[0], values)  # the same seed draws the same seven (what a resume relies on)
    evolution.step()
    assert evolution.population.shape == (4, len(space))  # then generations of the population's size


def test_a_first_draw_narrower_than_the_population_is_refused():
    message = r"search.initial_population must be at least search.population \(got 3 < 4\)"
    with pytest.raises(ConfigError, match=message):
        parse_config({**smoke_raw(), "search": {**smoke_raw()["search"], "initial_population": 3}})


def test_validate_tries_every_value_a_gene_can_take():
    loco = {"task": {"name": "locomotion"}, "es": {"popsize": 4}}
    # both ends are even, 5 and 7 are not: PGPE samples antithetic pairs
    odd = parse_config(
        {
            **loco,
            "search": {"population": 4, "elite": 2, "genes": {"es.popsize": {"low": 4, "high": 8, "integer": True}}},
        }
    )
    with pytest.raises(ConfigError, match=r"search.genes.es.popsize = 5: .*popsize must be even"):
        GenomeSpace.from_config(odd.search).validate(odd)
    gene = GenomeSpace.from_config(odd.search).genes[0]
    assert gene.probes() == [4, 5, 6, 7, 8]
    cont = Gene("train.lr", low=1e-3, high=1e-1, log=True)
    probes = cont.probes()
    assert len(probes) == 9 and probes[0] == pytest.approx(1e-3) and probes[-1] == pytest.approx(1e-1)
    assert all(a < b for a, b in zip(probes, probes[1:]))


def test_an_evolution_restored_from_its_checkpoint_breeds_what_the_uninterrupted_one_breeds(tmp_path):
    """Restored after generation 0, the GA neither measures the population again nor draws other
    children than the one that went on."""
    cfg = load_config(CONFIGS / "smoke_search.yaml")
    space = GenomeSpace.from_config(cfg.search)
    measured: list[torch.Tensor] = []

    def fitness(v):
        measured.append(v.clone())
        return -(v - 0.3).pow(2).sum(1)

    first = Evolution(space, cfg.search, 7, fitness)
    first.measure_initial()
    ck = SearchCheckpoint({}, "parent", 0, first.population, first.generator_state, first.fitness.clone())
    ck.save(tmp_path / "c.ckpt")
    first.step()
    children, measured[:] = measured[1], []
    again = Evolution(space, cfg.search, 7, fitness)
    again.restore(SearchCheckpoint.load(tmp_path / "c.ckpt", {}))
    again.step()
    assert len(measured) == 1 and torch.equal(measured[0], children)  # only the children were measured
    assert torch.equal(again.population, first.population) and torch.equal(again.fitness, first.fitness)


def _bundled(**genes) -> dict:
    """The smoke search with ``genes`` added (a bundle ``readout`` unless given)."""
    raw = smoke_raw()
    raw["search"]["genes"].update(
        genes
        or {
            "readout": {
                "choices": {
                    "static": {"plasticity.readout.rule": "none"},
                    "gated": {
                        "plasticity.readout.rule": "abcd",
                        "plasticity.readout.modulation": "neuromodulated",
                        "plasticity.readout.modulator_gate": True,
                        "network.modulator_reads_output": True,
                    },
                }
            }
        }
    )
    return raw


def test_a_bundle_is_one_categorical_gene_that_sets_every_path_of_its_choice():
    cfg = parse_config(_bundled())
    space = GenomeSpace.from_config(cfg.search)
    gene = space.genes[-1]
    assert gene.path == "readout" and gene.choices == ("static", "gated") and gene.categorical
    assert [gene.decode(u) for u in (0.0, 0.49, 0.5, 1.0)] == ["static", "static", "gated", "gated"]
    values = space.decode([0.5] * len(space.genes))
    assert values["readout"] == "gated" and space.decode(space.encode(values)) == values
    gated = space.config_for(cfg, values)
    r = gated.plasticity.readout
    assert (r.rule, r.modulation, r.modulator_gate, gated.network.modulator_reads_output) == (
        "abcd",
        "neuromodulated",
        True,
        True,
    )
    static = space.config_for(cfg, {**values, "readout": "static"})
    assert static.plasticity.readout.rule == "none" and not static.network.modulator_reads_output
    assert space.expand({"readout": "gated", "train.lr": 0.01})["network.modulator_reads_output"] is True
    with pytest.raises(ConfigError, match="search.genes.readout: 'dense' is not one of"):
        space.expand({"readout": "dense"})
    assert "readout=gated" in GenomeSpace.describe(values).split()
    space.validate(cfg)


def test_validate_names_the_bundle_and_the_choice_that_cannot_be_set():
    raw = _bundled(layer={"choices": {"low": {"network.theta": 0.8}, "typo": {"network.thet": 0.8}}})
    cfg = parse_config(raw)
    with pytest.raises(ConfigError, match=r"search.genes.layer = 'typo': .*thet"):
        GenomeSpace.from_config(cfg.search).validate(cfg)


@pytest.mark.parametrize(
    ("genes", "message"),
    [
        ({"network.x": {"choices": {"a": {"network.hidden": 8}}}}, "search.genes.network.x: a bundle's name is a word"),
        (
            {"size": {"choices": {"a": {"network.hidden": 8}, "b": {"train.lr": 0.01}}}},
            "search.genes.size.a sets network.hidden, which is searched (or scheduled) on its own",
        ),
        (
            {"one": {"choices": {"a": {"network.beta": 0.7}}}, "two": {"choices": {"b": {"network.beta": 0.8}}}},
            "search.genes.one and search.genes.two both set network.beta",
        ),
        ({"empty": {"choices": {}}}, "not empty"),
        ({"loose": {"choices": {"a": 5}}}, "a bundle's choice 'a' maps config paths to values (got 5)"),
    ],
)
def test_a_bundle_that_cannot_be_read_one_way_is_refused(genes, message):
    with pytest.raises(ConfigError) as e:
        parse_config(_bundled(**genes))
    assert message in str(e.value)


def test_a_fixed_path_is_taken_out_of_every_bundle():
    raw = _bundled()
    raw["search"]["fixed"] = {"plasticity.readout.rule": "none"}
    cfg = parse_config(raw)
    space = GenomeSpace.from_config(cfg.search)
    gated = space.config_for(cfg, {**space.decode([0.9] * len(space.genes)), "readout": "gated"})
    assert gated.plasticity.readout.rule == "none"  # the static control stays static
    assert gated.plasticity.readout.modulation == "neuromodulated"  # the rest of the choice still holds


def _searched(raw: dict, tmp_path, ray_tmp) -> tuple[list, list]:
    """The parent and child runs of a real search (the CLI, Ray, a SQLite store) of config ``raw``."""
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(raw))
    store = f"sqlite:///{tmp_path / 'm.db'}"
    p = search([str(path), "--tracking-uri", store], tmp_path, ray_tmp)
    assert p.returncode == 0, p.stderr
    _, parents, children = runs_of(store)
    return parents, children


def test_a_search_trains_each_candidate_with_every_path_its_bundle_choice_sets(tmp_path, ray_tmp):
    sets = {
        "narrow": {"network.theta": 0.8, "train.batch_size": 4},
        "wide": {"network.theta": 1.2, "train.batch_size": 8},
    }
    raw = smoke_raw()
    raw["search"]["genes"] = {"size": {"choices": sets}, "plasticity.input.rule": {"choices": ["none", "hebbian"]}}
    raw["search"]["generations"] = 1
    parents, children = _searched(raw, tmp_path, ray_tmp)
    assert len(parents) == 1 and len(children) == 4
    for c in children:
        choice = json.loads(c.data.tags["hybridopt.genome"])["size"]
        got = {k: float(c.data.params[k]) for k in sets[choice]}
        assert got == sets[choice], (choice, got)


def test_a_search_with_a_wider_first_draw_breeds_only_from_the_fittest_of_it(tmp_path, ray_tmp):
    raw = smoke_raw()
    raw["search"].update({"initial_population": 6, "generations": 2, "rungs": [1.0]})
    parents, children = _searched(raw, tmp_path, ray_tmp)
    first = [c for c in children if c.data.tags[TAG_GENERATION] == "0"]
    later = [c for c in children if c.data.tags[TAG_GENERATION] == "1"]
    assert len(first) == 6 and len(later) == 2 + 2  # six drawn; then two children and two elites training on
    ranked = sorted(first, key=lambda c: (-c.data.metrics["fitness"], int(c.data.tags[TAG_CANDIDATE])))
    kept, dropped = {c.info.run_id for c in ranked[:4]}, {c.info.run_id for c in ranked[4:]}
    parents_of_later = {c.data.tags[TAG_INHERITED_FROM] for c in later}
    assert parents_of_later <= kept and not parents_of_later & dropped
    assert "the first drawn from 6" in parents[0].data.tags["mlflow.note.content"]
