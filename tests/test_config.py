from pathlib import Path

import pytest

from hybridopt.config import ConfigError, load_config, network_spec, parse_config
from hybridopt.tracking import flatten
from tests.conftest import CONFIGS


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path: Path):
    cfg = load_config(path)
    assert cfg.task.name


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"network\.bogus: unknown key"):
        parse_config({"task": {"name": "cue_association"}, "network": {"bogus": 1}})


def test_unknown_task_key_is_named_without_union_tag():
    with pytest.raises(ConfigError, match=r"^task\.n_cuez: unknown key$"):
        parse_config({"task": {"name": "cue_association", "n_cuez": 3}})


def test_unknown_rule_and_mode_are_named():
    with pytest.raises(ConfigError, match=r"plasticity\.input\.rule: unknown rule 'hebb'"):
        parse_config({"task": {"name": "cue_association"}, "plasticity": {"input": {"rule": "hebb"}}})
    with pytest.raises(ConfigError, match=r"plasticity\.readout\.modulation: unknown modulation"):
        parse_config({"task": {"name": "cue_association"}, "plasticity": {"readout": {"modulation": "x"}}})


def test_negative_budget_rejected():
    with pytest.raises(ConfigError, match=r"train\.steps"):
        parse_config({"task": {"name": "cue_association"}, "train": {"steps": -1}})


def test_overrides_set_nested_keys_with_yaml_values():
    cfg = load_config(
        CONFIGS / "smoke.yaml",
        ["plasticity.recurrent.rule=oja", "plasticity.recurrent.modulation=retroactive", "train.lr=1e-2", "seed=7"],
    )
    assert cfg.plasticity.recurrent.rule == "oja"
    assert cfg.plasticity.recurrent.modulation == "retroactive"
    assert cfg.train.lr == pytest.approx(0.01)
    assert cfg.seed == 7


@pytest.mark.parametrize("bad", ["no-equals-sign", "=3", "train.steps=[1,"])
def test_malformed_override_is_a_config_error(bad):
    with pytest.raises(ConfigError):
        load_config(CONFIGS / "smoke.yaml", [bad])


def test_missing_and_invalid_yaml(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)


def test_flatten_exposes_each_projections_rule_and_modulation():
    flat = flatten(load_config(CONFIGS / "smoke.yaml"))
    for p in ("input", "recurrent", "readout"):
        assert f"plasticity.{p}.rule" in flat and f"plasticity.{p}.modulation" in flat
    assert flat["plasticity.input.rule"] == "hebbian"


def test_network_spec_carries_plasticity_per_projection():
    cfg = load_config(
        CONFIGS / "smoke.yaml", ["plasticity.readout.rule=bcm", "plasticity.readout.coefficients={tau_phi: 7}"]
    )
    spec = network_spec(cfg, n_in=5, n_out=2)
    assert (spec.n_in, spec.hidden, spec.n_out) == (5, 16, 2)
    assert spec.input.rule == "hebbian" and spec.readout.rule == "bcm"
    assert spec.readout.coefficients == {"tau_phi": 7.0}


def test_coefficients_of_a_projection_without_a_rule_have_no_effect():
    """A projection whose rule is ``none`` (as a search's gene may switch it) keeps its other
    options without error; a rule's coefficients then name nothing."""
    cfg = parse_config(
        {
            "task": {"name": "cue_association"},
            "plasticity": {"readout": {"rule": "abcd", "coefficients": {"A": 0.0, "B": 1.0}}},
        },
        ["plasticity.readout.rule=none"],
    )
    spec = network_spec(cfg, n_in=5, n_out=2)
    assert not spec.readout.plastic


def test_coefficient_of_another_rule_rejected():
    with pytest.raises(ConfigError, match="has no coefficient"):
        parse_config(
            {
                "task": {"name": "cue_association"},
                "plasticity": {"input": {"rule": "oja", "coefficients": {"a_plus": 1}}},
            }
        )


def test_placement_overrides_make_one_projection_plastic():
    from hybridopt.config import placement_overrides

    cfg = load_config(CONFIGS / "smoke.yaml", placement_overrides("recurrent:bcm/retroactive"))
    assert cfg.plasticity.input.rule == "none" and cfg.plasticity.readout.rule == "none"
    assert (cfg.plasticity.recurrent.rule, cfg.plasticity.recurrent.modulation) == ("bcm", "retroactive")
    assert load_config(CONFIGS / "smoke.yaml", placement_overrides("static")).plasticity.input.rule == "none"
    with pytest.raises(ConfigError, match="placement"):
        placement_overrides("input-hebbian")


def test_final_training_needs_kept_states_and_scales_the_candidate_budget():
    from hybridopt.search.halving import scaled_budget

    cfg = load_config(CONFIGS / "smoke_search.yaml", ["search.final_budget=2"])
    with pytest.raises(ConfigError, match=r"final_budget needs search.inheritance: lamarckian"):
        load_config(CONFIGS / "smoke_search.yaml", ["search.final_budget=2", "search.inheritance=none"])
    big = scaled_budget(load_config(CONFIGS / "cue_association_search.yaml"), 3.5)
    assert (big.train.steps, big.train.cpu_minutes) == (350000, 10.5)
    assert scaled_budget(cfg, 2).train.steps == 8 and scaled_budget(cfg, 2).train.cpu_minutes is None
