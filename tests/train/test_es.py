"""The ES inner loop: per-group search stdev, the TrainResult it returns, determinism, the
saved policy, and the CLI end to end (train and search) on the smoke locomotion configs."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from hybridopt.config import load_config, parse_config
from hybridopt.snn.network import NetworkSpec, PlasticSNN, ProjectionSpec
from hybridopt.train import train_candidate
from hybridopt.train.es import build_policy, evaluate_policy, load_policy
from hybridopt.train.search_scale import parameter_group, search_stdev

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke_locomotion.yaml"
SMOKE_SEARCH = ROOT / "configs" / "smoke_locomotion_search.yaml"
CONDITIONS = ("standard", "crippled_leg", "low_friction", "heavy_body")


@pytest.fixture(scope="module")
def cfg():
    return load_config(SMOKE)


@pytest.fixture(scope="module")
def result(cfg):
    return train_candidate(cfg)


def test_parameter_groups_and_their_stdevs():
    spec = NetworkSpec(
        n_in=3,
        hidden=4,
        n_out=2,
        input=ProjectionSpec(rule="bcm", modulation="neuromodulated"),
        recurrent=ProjectionSpec(rule="stdp", modulation="retroactive"),
    )
    net = PlasticSNN(spec)
    groups = {n: parameter_group(net, n) for n, _ in net.named_parameters()}
    assert {n for n, g in groups.items() if g == "weights"} == {
        "projections.input.W",
        "projections.recurrent.W",
        "projections.readout.W",
        "b_hidden",
        "b_out",
    }
    assert groups["projections.input.alpha"] == groups["projections.input.mod_a"] == "plasticity"
    assert groups["projections.input.w_M"] == groups["projections.recurrent.eta_E"] == "plasticity"
    assert groups["projections.input.coeffs.tau_phi"] == groups["projections.recurrent.coeffs.a_plus"] == "rule"

    es = parse_config({"task": {"name": "locomotion"}, "es": {"stdev": 0.1, "plastic_stdev": 0.002}}).es
    sigma = search_stdev(net, es)
    assert sigma.numel() == sum(p.numel() for p in net.parameters())
    offset = 0
    for name, p in net.named_parameters():
        part = sigma[offset : offset + p.numel()]
        offset += p.numel()
        expected = {"weights": 0.1, "plasticity": 0.002}.get(groups[name])
        if expected is None:  # rule coefficients: relative to their magnitude (tau_phi = 20)
            expected = 0.002 * max(1.0, abs(float(p.detach())))
        torch.testing.assert_close(part, torch.full_like(part, expected))


def test_es_result_has_curves_and_every_condition(cfg, result):
    assert result.status == "FINISHED", result.reason
    assert result.steps == cfg.es.generations
    assert result.fitness == result.final_metrics["eval/return/standard"]
    for c in CONDITIONS:
        assert math.isfinite(result.final_metrics[f"eval/return/{c}"])
        d = result.final_metrics[f"eval/degradation/{c}"]
        r_std, r_c = result.final_metrics["eval/return/standard"], result.final_metrics[f"eval/return/{c}"]
        assert d == pytest.approx((r_std - r_c) / abs(r_std))
    assert result.final_metrics["eval/degradation/standard"] == 0.0
    steps = [s for s, _ in result.history]
    assert steps == list(range(1, cfg.es.generations + 1))
    for _, m in result.history:
        assert m["train/return_best"] >= m["train/return_mean"]
        assert m["train/stdev/plasticity"] < m["train/stdev/weights"]
    assert "eval/return/standard" in result.history[1][1]  # eval_every: 2
    assert {"obs_norm.mean", "obs_norm.var", "obs_norm.count"} <= set(result.state_dict)


def test_es_is_deterministic_for_a_fixed_seed(cfg, result):
    again = train_candidate(cfg)
    assert again.final_metrics == result.final_metrics
    assert [m for _, m in again.history] == [m for _, m in result.history]


def test_saved_policy_replays_its_evaluation(cfg, result):
    task, net, normalizer = load_policy(cfg, result.state_dict)
    replay = evaluate_policy(task, net, normalizer, cfg.seed)
    for c in CONDITIONS:
        assert replay[f"eval/return/{c}"] == pytest.approx(result.final_metrics[f"eval/return/{c}"], rel=1e-9)


@pytest.mark.parametrize("es", [{"algorithm": "snes", "popsize": 5, "center_lr": 1.0}, {"optimizer": "adam"}])
def test_other_search_algorithms_run(cfg, es):
    r = train_candidate(cfg.model_copy(update={"es": cfg.es.model_copy(update=es)}))
    assert r.status == "FINISHED", r.reason
    assert r.steps == cfg.es.generations and math.isfinite(r.fitness)


@pytest.mark.slow
def test_episode_workers_give_the_same_result(cfg, result):
    two = train_candidate(cfg.model_copy(update={"es": cfg.es.model_copy(update={"workers": 2})}))
    assert two.status == "FINISHED", two.reason
    assert two.final_metrics == result.final_metrics
    assert [m for _, m in two.history] == [m for _, m in result.history]


def test_a_broken_environment_is_a_failed_result_not_an_exception(cfg):
    bad = cfg.model_copy(update={"task": cfg.task.model_copy(update={"env_kwargs": {"no_such_option": 1}})})
    r = train_candidate(bad)
    assert r.failed and "no_such_option" in r.reason and r.fitness == -math.inf


# --------------------------------------------------------------------------- CLI end to end
def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", "hybridopt", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_cli_train_logs_every_condition(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    proc = _cli(["train", str(SMOKE), "--tracking-uri", uri], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    client = MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name("smoke_locomotion").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["hybridopt.kind"] == "train"
    for c in CONDITIONS:
        assert f"eval/return/{c}" in run.data.metrics
        assert f"eval/degradation/{c}" in run.data.metrics
    assert len(client.get_metric_history(run.info.run_id, "train/return_mean")) == 3
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()


@pytest.mark.slow
def test_cli_search_on_locomotion(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    ckpt = tmp_path / "c.ckpt"
    proc = _cli(["search", str(SMOKE_SEARCH), "--tracking-uri", uri, "--set", f"search.checkpoint={ckpt}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ckpt.is_file()
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("smoke_locomotion_search").experiment_id])
    children = [r for r in runs if r.data.tags.get("hybridopt.kind") == "candidate"]
    assert len(children) == 8  # population 4, then 2 children and the 2 elites training on
    for run in children:
        assert run.info.status == "FINISHED", run.data.tags.get("hybridopt.failure")
        for c in CONDITIONS:
            assert f"eval/return/{c}" in run.data.metrics
    # the ES loop continues inherited policies: generation 1 goes on from generation 0's states
    later = [r for r in children if r.data.tags["hybridopt.generation"] == "1"]
    assert all("hybridopt.inherited_from" in r.data.tags for r in later)
    for r in later:
        src = client.get_run(r.data.tags["hybridopt.inherited_from"])
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "train/return_mean")]
        assert min(steps) == int(src.data.metrics["train_steps"]) + 1


def test_es_continues_from_a_state(cfg, result):
    # 3 generations, then 2 more from the returned state: the search goes on from the state's
    # centre, observation statistics and search scales, with generation numbers following on
    state = result.state
    assert (
        state.step == cfg.es.generations
        and state.optimizer["stdev"].shape == search_stdev(build_policy(cfg)[1], cfg.es).shape
    )
    more = train_candidate(load_config(SMOKE, ["es.generations=2"]), start=state)
    assert more.status == "FINISHED", more.reason
    assert [s for s, _ in more.history] == [4, 5] and more.state.step == 5
    assert more.state.episodes > state.episodes and more.state.cpu_s > state.cpu_s
    assert float(more.state_dict["obs_norm.count"]) > float(result.state_dict["obs_norm.count"])
    # a zero budget changes nothing: the state's own policy is what gets evaluated
    same = train_candidate(cfg, start=state, cpu_budget_s=0.0)
    assert same.history == [] or all(s <= state.step for s, _ in same.history)
    assert same.final_metrics == result.final_metrics
