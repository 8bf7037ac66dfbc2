"""The ES inner loop: per-group search stdev, the TrainResult it returns, determinism, the
saved policy, and the CLI end to end (train and search) on the smoke locomotion configs."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch.nn.utils import parameters_to_vector

from hybridopt.config import load_config, parse_config
from hybridopt.snn.network import NetworkSpec, PlasticSNN, ProjectionSpec
from hybridopt.tasks.base import ObsNormalizer
from hybridopt.train import train_candidate
from hybridopt.train.es import build_policy, evaluate_policy, load_policy
from hybridopt.train.search_scale import parameter_group, search_stdev
from hybridopt.train.weights import load_trained, weights_bytes

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


def test_a_weights_file_rebuilds_the_policy_with_its_observation_statistics(cfg, result, tmp_path):
    path = tmp_path / "weights.pt"
    path.write_bytes(weights_bytes(cfg, result.state_dict))
    stored, (task, net, normalizer) = load_trained(path)
    assert stored == cfg
    assert normalizer.count > 0  # the statistics gathered in training, not a fresh normaliser
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
    [parent] = [r for r in runs if r.data.tags.get("hybridopt.kind") == "search"]
    assert "returns_by_condition.png" in {a.path for a in client.list_artifacts(parent.info.run_id)}  # the best's
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


# --------------------------------------------------------------------------- conditions as a training distribution
TRAINED = ["standard", "weak:back:0.5"]
DIST = ["task.episode_steps=20", "es.generations=2", f"task.train_conditions={TRAINED}"]


def _dist(heldout: list[str]):
    return load_config(SMOKE, [*DIST, f"task.conditions={heldout}"])


@pytest.fixture(scope="module")
def dist_result():
    return train_candidate(_dist(["crippled_leg", "short:front:0.5"]))


def test_fitness_is_the_mean_over_training_conditions_and_heldout_are_only_evaluated(dist_result):
    r = dist_result
    assert r.status == "FINISHED", r.reason
    m = r.final_metrics
    returns = {k: m[f"eval/return/{k}"] for k in ("standard", "weak_back_0.5", "crippled_leg", "short_front_0.5")}
    assert len(set(returns.values())) == len(returns)  # four conditions, four different returns
    assert r.fitness == m["fitness"] == m["eval/return/train"]
    assert m["eval/return/train"] == pytest.approx((returns["standard"] + returns["weak_back_0.5"]) / 2, rel=1e-12)
    heldout = (returns["crippled_leg"] + returns["short_front_0.5"]) / 2
    assert m["eval/return/heldout"] == pytest.approx(heldout, rel=1e-12)
    for k, v in returns.items():
        assert m[f"eval/retention/{k}"] == pytest.approx(v / returns["standard"], rel=1e-12)
        assert m[f"eval/degradation/{k}"] == pytest.approx((returns["standard"] - v) / abs(returns["standard"]))
    assert m["eval/retention/heldout"] == pytest.approx(heldout / returns["standard"], rel=1e-12)
    # the curves evaluate the training conditions only: the search never sees a held-out return
    evals = [h for _, h in r.history if "eval/return/train" in h]
    assert evals and all("eval/return/crippled_leg" not in h and "eval/return/heldout" not in h for h in evals)
    assert r.episodes == 2 + 2 * 4 * 2 + 2 * 2 + 2 * 4  # first episodes, generations, eval at 2, final


def test_the_heldout_list_does_not_change_training(dist_result):
    other = train_candidate(_dist(["friction:0.5"]))
    assert other.fitness == dist_result.fitness
    assert [m["train/return_mean"] for _, m in other.history] == [
        m["train/return_mean"] for _, m in dist_result.history
    ]
    assert "eval/return/friction_0.5" in other.final_metrics and "eval/return/crippled_leg" not in other.final_metrics
    # ...while the training list does
    alone = train_candidate(load_config(SMOKE, [*DIST[:2], "task.conditions=[crippled_leg]"]))
    assert alone.history[0][1]["train/return_mean"] != dist_result.history[0][1]["train/return_mean"]
    assert alone.fitness == alone.final_metrics["eval/return/standard"]


def test_a_sample_plays_every_training_condition_and_its_observations_count():
    from hybridopt.train.es import _play

    cfg = _dist([])
    task, net = build_policy(cfg)
    norm = ObsNormalizer.identity(task.n_in)
    center = parameters_to_vector(net.parameters()).clone()
    fitness, stats = _play(task, net, center, [5, 6], norm)
    per = [task.rollout(net, net.params(), [5, 6], norm, condition=c) for c in TRAINED]
    assert fitness == pytest.approx(np.mean([r.returns.mean() for r in per]), rel=1e-12)
    assert stats.count == sum(r.steps for r in per)


class _OneAtATime:
    """The locomotion task seen through :class:`ControlTask` alone (no side-by-side play)."""

    def __init__(self, task):
        self._task = task
        self.name, self.n_in, self.n_out, self.cfg = task.name, task.n_in, task.n_out, task.cfg

    def rollout(self, *args, **kwargs):
        return self._task.rollout(*args, **kwargs)


def test_a_generation_is_played_side_by_side_where_the_task_can_and_one_by_one_where_not():
    from hybridopt.tasks.base import ControlTask, PopulationControlTask
    from hybridopt.train.es import _play, _play_all

    task, net = build_policy(_dist([]))
    narrow = _OneAtATime(task)
    assert isinstance(task, PopulationControlTask)
    assert isinstance(narrow, ControlTask) and not isinstance(narrow, PopulationControlTask)
    norm = ObsNormalizer.identity(task.n_in)
    center = parameters_to_vector(net.parameters()).clone()
    gen = torch.Generator().manual_seed(1)
    samples = [center + 0.05 * torch.randn(center.shape, generator=gen) for _ in range(3)]
    alone = [_play(task, net, x, [5], norm) for x in samples]
    one_by_one = _play_all(narrow, net, samples, [5], norm)
    together = _play_all(task, net, samples, [5], norm)
    assert [f for f, _ in one_by_one] == [f for f, _ in alone]  # the same path, exactly
    assert len({f for f, _ in alone}) == 3  # the samples differ
    for (f, st), (fa, sta) in zip(together, alone):
        assert f == pytest.approx(fa, rel=1e-3)  # float rounding of the batched step only
        assert st.count == sta.count


def test_a_train_run_logs_the_returns_figure_and_report_draws_it(tmp_path):
    from hybridopt.api import train
    from hybridopt.results.report import write_report

    uri = f"sqlite:///{tmp_path}/m.db"
    runs = [
        train(
            SMOKE,
            overrides=[*DIST, "task.conditions=[crippled_leg, 'short:front:0.5']", f"seed={s}"],
            tracking_uri=uri,
        )
        for s in (0, 1)
    ]
    client = MlflowClient(tracking_uri=uri)
    for run in runs:
        assert run.status == "FINISHED", run.reason
        metrics = client.get_run(run.run_id).data.metrics
        assert metrics["eval/retention/short_front_0.5"] == pytest.approx(
            metrics["eval/return/short_front_0.5"] / metrics["eval/return/standard"]
        )
        assert "returns_by_condition.png" in {a.path for a in client.list_artifacts(run.run_id)}
        png = Path(client.download_artifacts(run.run_id, "returns_by_condition.png", str(tmp_path)))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    out = tmp_path / "report"
    write_report(uri, [runs[0].experiment], out)
    figure = out / "comparison__returns_by_condition.png"
    assert figure.is_file() and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fresh_weights_each_episode_and_only_the_rest_learned():
    fresh = load_config(SMOKE, ["task.fresh_weights=true", "plasticity.input.rule=abcd"])
    task, net = build_policy(fresh)
    norm = ObsNormalizer.identity(task.n_in)
    params = net.params()
    a = task.rollout(net, params, [3, 4], norm).returns
    assert np.array_equal(a, task.rollout(net, params, [3, 4], norm).returns)  # the same seeds: the same weights
    assert a[1] == task.rollout(net, params, [4], norm).returns[0]  # each episode on its own seed's weights
    with torch.no_grad():
        for proj in net.projections.values():
            proj.W.mul_(5.0)  # the network's own W play no part
    assert np.array_equal(a, task.rollout(net, net.params(), [3, 4], norm).returns)
    r = train_candidate(fresh)
    assert r.status == "FINISHED", r.reason
    trained = {k: v for k, v in r.state_dict.items() if not k.startswith("obs_norm.")}
    for name, p in net.named_parameters():
        if name.endswith(".W"):
            torch.testing.assert_close(trained[name], p / 5.0, msg=name)  # left out of the search: as built
    moved = [n for n, p in net.named_parameters() if not n.endswith(".W") and not torch.equal(trained[n], p)]
    assert "projections.input.coeffs.A" in moved and "projections.input.alpha" in moved  # the rule learned
