"""A curriculum across generations (``search.schedule``): each generation trains with its own value
of a scheduled config path, and a bad schedule is refused before anything is written."""

from __future__ import annotations

import pytest
import yaml

from hybridopt.config import ConfigError, parse_config
from hybridopt.search.genome import GenomeSpace
from hybridopt.search.outcome import Standings
from hybridopt.stored_names import CandidateRecord
from tests.search.searching import runs_of, search, smoke_raw


def _smoke(**schedule) -> dict:
    raw = smoke_raw()
    raw["search"]["schedule"] = schedule
    return raw


def test_each_generation_reads_its_value_then_the_last_one_holds():
    search_cfg = parse_config(_smoke(**{"task.noise": [0.0, 0.1], "network.theta": [1.5]})).search
    assert GenomeSpace.scheduled(search_cfg, 0) == {"task.noise": 0.0, "network.theta": 1.5}
    assert GenomeSpace.scheduled(search_cfg, 1) == {"task.noise": 0.1, "network.theta": 1.5}
    assert GenomeSpace.scheduled(search_cfg, 7) == {"task.noise": 0.1, "network.theta": 1.5}


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ({"task.noise": [0.0, 0.1, 0.2]}, "search.schedule.task.noise has more values than generations (2)"),
        ({"plasticity.input.rule": ["none"]}, "search.schedule and search.genes both name plasticity.input.rule"),
        ({"task.noise": []}, "task.noise"),
    ],
)
def test_a_schedule_that_cannot_be_followed_is_refused(schedule, message):
    with pytest.raises(ConfigError, match="schedule") as e:
        parse_config(_smoke(**schedule))
    assert message in str(e.value)


def test_every_scheduled_value_is_checked_before_the_search_starts(tmp_path, ray_tmp):
    raw = _smoke(**{"task.noise": [0.0, 1.5]})
    cfg = parse_config(raw)
    with pytest.raises(ConfigError, match=r"search.schedule.task.noise = 1.5: .*noise"):
        GenomeSpace.from_config(cfg.search).validate(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    p = search([str(path), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"], tmp_path, ray_tmp)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "search.schedule.task.noise = 1.5" in p.stderr, p.stderr
    assert not (tmp_path / "m.db").exists()


def test_the_noise_rises_with_the_generations(tmp_path, ray_tmp):
    path = tmp_path / "curriculum.yaml"
    path.write_text(yaml.safe_dump(_smoke(**{"task.noise": [0.0, 0.3]})))
    store = f"sqlite:///{tmp_path / 'm.db'}"
    p = search([str(path), "--tracking-uri", store], tmp_path, ray_tmp)
    assert p.returncode == 0, p.stderr
    _, parents, children = runs_of(store)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    noise = {}
    for c in children:
        noise.setdefault(c.data.tags["hybridopt.generation"], set()).add(float(c.data.params["task.noise"]))
    assert noise == {"0": {0.0}, "1": {0.3}}
    winner = next(c for c in children if c.info.run_id == parents[0].data.tags["hybridopt.best_run"])
    assert winner.data.tags["hybridopt.generation"] == "1"  # measured at noise 0.3, not on the clean task


def _finished(generation: int, fitness: float) -> CandidateRecord:
    return CandidateRecord(f"r{generation}-{fitness}", generation, 0, [], {}, "FINISHED", fitness)


def test_only_candidates_measured_on_the_final_values_can_be_the_best():
    search_cfg = parse_config(_smoke(**{"task.noise": [0.0, 0.2]})).search
    assert GenomeSpace.schedule_settled(search_cfg) == 1
    assert GenomeSpace.schedule_settled(parse_config(_smoke()).search) == 0
    standings = Standings(ranked_from=1)
    standings.add(_finished(0, 0.9), lambda: {"w": 0})  # clean: easier, never the best
    assert standings.best is None
    assert standings.end_generation(0, 0.9)["best_fitness"] == 0.9
    standings.add(_finished(1, 0.6), lambda: {"w": 1})
    standings.add(_finished(1, 0.7), lambda: {"w": 2})
    assert standings.best is not None and standings.best[1] == {"w": 2}
    assert standings.end_generation(1, 0.7)["best_fitness"] == 0.7  # not the clean 0.9 carried on
    standings.add(_finished(2, 0.65), lambda: {"w": 3})
    assert standings.best_fitness == 0.7 and standings.end_generation(2, 0.65)["best_fitness"] == 0.7


def test_a_fixed_path_is_no_longer_searched_and_every_candidate_has_its_value():
    raw = _smoke()
    raw["search"]["fixed"] = {"plasticity.input.rule": "none", "plasticity.recurrent.rule": "none"}
    cfg = parse_config(raw)
    assert cfg.plasticity.input.rule == cfg.plasticity.recurrent.rule == "none"
    space = GenomeSpace.from_config(cfg.search)
    paths = {g.path for g in space.genes}
    assert not {"plasticity.input.rule", "plasticity.recurrent.rule"} & paths
    assert "train.lr" in paths  # the rest is searched as before
    child = space.config_for(cfg, space.decode([0.9] * len(space.genes)))
    assert child.plasticity.input.rule == "none" and child.plasticity.recurrent.rule == "none"
    raw["search"]["fixed"] = {"plasticity.input.rule": "bogus"}
    with pytest.raises(ConfigError, match="bogus"):
        parse_config(raw)
