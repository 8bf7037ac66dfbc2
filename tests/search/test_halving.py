"""Successive halving's pieces: the budget of a rung and the validation of the rungs."""

import math

import pytest

from hybridopt.config import ConfigError, load_config
from hybridopt.search.halving import budget_fraction
from tests.conftest import CONFIGS


def test_a_rung_trains_its_share_of_the_steps_and_the_cpu_budget():
    cfg = load_config(CONFIGS / "smoke.yaml", ["train.steps=100", "train.cpu_minutes=2"])
    part, cpu = budget_fraction(cfg, 0.25, 0.5)
    assert part.train.steps == 25 and cpu == pytest.approx(30.0)
    part, cpu = budget_fraction(cfg, 0.0, 0.25)
    assert part.train.steps == 25 and cpu == pytest.approx(30.0)
    part, cpu = budget_fraction(cfg, 0.5, 1.0)
    assert part.train.steps == 50 and cpu == pytest.approx(60.0)
    # a share smaller than one step is still one step; without a CPU budget, none per rung
    small, cpu = budget_fraction(load_config(CONFIGS / "smoke.yaml", ["train.steps=2"]), 0.25, 0.5)
    assert small.train.steps == 1 and math.isinf(cpu)


def test_locomotion_rungs_share_the_generations():
    cfg = load_config(CONFIGS / "smoke_locomotion.yaml", ["es.generations=8", "es.cpu_minutes=1"])
    part, cpu = budget_fraction(cfg, 0.5, 1.0)
    assert part.es.generations == 4 and cpu == pytest.approx(30.0)


@pytest.mark.parametrize("rungs", ["[0.5, 0.25, 1.0]", "[0.25, 0.5]", "[0.0, 1.0]", "[]", "[0.5, 0.5, 1.0]"])
def test_bad_rungs_are_refused(rungs):
    with pytest.raises(ConfigError, match="search.rungs"):
        load_config(CONFIGS / "smoke_search.yaml", [f"search.rungs={rungs}"])
