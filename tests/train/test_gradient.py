import math

import pytest
import torch

from hybridopt.config import load_config
from hybridopt.train.gradient import NONFINITE_PATIENCE, build, evaluate, scheduled_lr, train_gradient
from tests.conftest import CONFIGS


def smoke(*overrides):
    return load_config(CONFIGS / "smoke.yaml", list(overrides))


def test_same_seed_same_fitness_bit_for_bit():
    a, b = train_gradient(smoke()), train_gradient(smoke())
    assert a.status == b.status == "FINISHED"
    assert a.fitness == b.fitness
    assert [m for _, m in a.history] == [m for _, m in b.history]
    for k in a.state_dict:
        assert torch.equal(a.state_dict[k], b.state_dict[k])


def test_training_changes_weights_and_records_curves():
    cfg = smoke()
    _, net0 = build(cfg)
    r = train_gradient(cfg)
    assert r.steps == cfg.train.steps and r.episodes == cfg.train.steps * cfg.train.batch_size
    assert [s for s, _ in r.history] == list(range(1, cfg.train.steps + 1))
    assert all("train/loss" in m for _, m in r.history)
    assert sum("eval/accuracy" in m for _, m in r.history) == 2  # eval_every=3 over 6 steps
    changed = [k for k, v in net0.state_dict().items() if not torch.equal(v, r.state_dict[k])]
    assert "projections.input.W" in changed and "projections.input.alpha" in changed


def test_eval_is_held_out_and_reproducible_from_weights():
    cfg = smoke()
    r = train_gradient(cfg)
    task, net = build(cfg)
    net.load_state_dict(r.state_dict)
    assert evaluate(net, task, cfg)["eval/accuracy"] == r.fitness
    # held-out: evaluation episodes are not the first training batches
    gen_train = torch.Generator().manual_seed(cfg.seed)
    from hybridopt.train.gradient import EVAL_SEED_OFFSET

    gen_eval = torch.Generator().manual_seed(EVAL_SEED_OFFSET + cfg.seed)
    assert not torch.equal(task.batch(8, gen_train).x, task.batch(8, gen_eval).x)


def test_non_finite_loss_fails_the_candidate_with_a_reason():
    r = train_gradient(smoke("network.readout_gain=1e38"))  # an infinite readout
    assert r.failed and r.status == "FAILED"
    assert "non-finite loss" in r.reason
    assert r.fitness == -math.inf and r.state_dict == {}


def test_non_finite_gradient_fails_the_candidate_before_the_weights_are_touched():
    # a finite loss (~1e36) whose gradient overflows: caught before Adam writes NaN everywhere
    # (every batch overflows: each is skipped, and NONFINITE_PATIENCE of them in a row fail the run)
    r = train_gradient(smoke("train.rate_reg=1e38", "train.steps=50"))
    assert r.failed and r.reason.startswith("non-finite gradient at step 0 (loss 7.")
    assert r.reason.endswith(f"and at each of the {NONFINITE_PATIENCE - 1} batches after it")
    assert r.fitness == -math.inf and r.steps == 0  # no step was applied
    assert r.cpu_time > 0  # the batches it tried count in the search's CPU


def test_a_run_counts_the_batches_it_skipped():
    r = train_gradient(smoke())
    assert r.status == "FINISHED" and r.final_metrics["skipped_steps"] == 0.0


def test_an_error_inside_training_fails_the_candidate_instead_of_raising():
    # n_cues=2 passes config validation but the task cannot build pairs without the target.
    r = train_gradient(smoke("task.n_cues=2"))
    assert r.failed and "n_cues" in r.reason


def test_cpu_budget_stops_training_early():
    r = train_gradient(smoke("train.steps=100000", "train.cpu_minutes=0.02"))
    assert r.status == "FINISHED"
    assert 0 < r.steps < 100000
    assert r.cpu_time < 0.02 * 60 + 5


@pytest.mark.parametrize("task", ["pattern_memory"])
def test_other_task_trains(task):
    r = train_gradient(smoke(f"task={{name: {task}}}", "train.steps=2"))
    assert r.status == "FINISHED" and 0.0 <= r.fitness <= 1.0


def test_continuing_from_a_state_is_the_same_training():
    # 6 steps in one call and 2 + 4 steps through the returned state: the same weights, optimiser
    # moments and curves, bit for bit, with the step numbers going on from where the state stopped
    full = train_gradient(smoke())
    first = train_gradient(smoke("train.steps=2"))
    rest = train_gradient(smoke("train.steps=4"), start=first.state)
    assert first.state.step == 2 and rest.state.step == 6 == rest.steps
    assert [s for s, _ in rest.history] == [3, 4, 5, 6]
    assert [m for _, m in full.history][2:] == [m for _, m in rest.history]
    for k, v in full.state.model.items():
        assert torch.equal(rest.state.model[k], v), k
    assert rest.fitness == full.fitness
    assert rest.state.episodes == full.state.episodes == 6 * 8
    assert rest.state.cpu_s == pytest.approx(first.state.cpu_s + rest.cpu_time)
    assert full.state.optimizer["state"][0]["step"] == 6 == rest.state.optimizer["state"][0]["step"]


def test_a_state_with_a_fresh_optimiser_keeps_its_weights_and_trains_on():
    first = train_gradient(smoke("train.steps=2"))
    start = first.state.fresh_optimizer()
    assert start.optimizer is None and start.rng is None and start.step == 2
    zero = train_gradient(smoke(), start=start, cpu_budget_s=0.0)
    for k, v in first.state.model.items():  # no step: the weights are the state's
        assert torch.equal(zero.state.model[k], v), k
    assert zero.fitness == first.fitness
    more = train_gradient(smoke("train.steps=2"), start=start)
    assert [s for s, _ in more.history] == [3, 4] and more.state.optimizer["state"][0]["step"] == 2
    assert not torch.equal(more.state.model["projections.input.W"], first.state.model["projections.input.W"])


def test_a_cpu_budget_for_the_call():
    r = train_gradient(smoke("train.steps=1000"), cpu_budget_s=0.0)
    assert r.status == "FINISHED" and r.steps == 0 and r.history[-1][0] == 0  # evaluated, untrained


def test_the_trained_network_is_measured_on_reserved_test_episodes():
    from hybridopt.tasks import EVAL_SEED_OFFSET, TEST_SEED_OFFSET
    from hybridopt.train.gradient import test_accuracy

    cfg = smoke("train.test_episodes=300")
    r = train_gradient(cfg)
    m = r.final_metrics
    assert m["test/episodes"] == 300 and 0.0 <= m["test/accuracy"] <= 1.0
    task, net = build(cfg)
    net.load_state_dict(r.state_dict)
    again = test_accuracy(net, task, cfg, 300)
    assert again["test/accuracy"] == m["test/accuracy"]  # seeded: the same episodes
    # the standard error of a mean of per-episode fitness, by hand
    gen = torch.Generator().manual_seed(TEST_SEED_OFFSET + cfg.seed)
    fits = []
    for n in (256, 44):
        batch = task.batch(n, gen)
        with torch.no_grad():
            fits.append(task.fitness(net(batch.x)[0], batch).double())
    f = torch.cat(fits)
    assert math.isclose(again["test/accuracy_se"], f.std().item() / math.sqrt(300), rel_tol=1e-9)
    # test episodes are none of the evaluation episodes
    ev = task.batch(cfg.train.batch_size, torch.Generator().manual_seed(EVAL_SEED_OFFSET + cfg.seed))
    te = task.batch(cfg.train.batch_size, torch.Generator().manual_seed(TEST_SEED_OFFSET + cfg.seed))
    assert not torch.equal(ev.x, te.x)
    assert "test/accuracy" not in train_gradient(smoke("train.test_episodes=0")).final_metrics


def test_the_cosine_schedule_by_hand():
    tc = smoke("train.lr=0.01", "train.lr_schedule=cosine", "train.lr_final=0.2", "train.steps=100").train
    inf = math.inf
    assert scheduled_lr(tc, 0, 0.0, inf) == pytest.approx(0.01)
    assert scheduled_lr(tc, 50, 0.0, inf) == pytest.approx(0.01 * (0.2 + 0.8 * 0.5))  # cos(pi/2) = 0
    assert scheduled_lr(tc, 25, 0.0, inf) == pytest.approx(0.01 * (0.2 + 0.8 * (1 + math.sqrt(0.5)) / 2))
    assert scheduled_lr(tc, 100, 0.0, inf) == pytest.approx(0.002)
    assert scheduled_lr(tc, 10, 30.0, 60.0) == pytest.approx(0.006)  # the CPU budget is nearer its end
    assert scheduled_lr(tc, 10, 90.0, 60.0) == pytest.approx(0.002)  # past it: the final rate
    const = smoke("train.lr=0.01", "train.steps=100").train
    assert scheduled_lr(const, 50, 30.0, 60.0) == 0.01


def test_a_cosine_run_anneals_to_its_final_rate_and_a_continued_run_restarts():
    cfg = smoke("train.lr=0.01", "train.lr_schedule=cosine", "train.lr_final=0.1")
    r = train_gradient(cfg)
    lrs = [m["train/lr"] for _, m in r.history if "train/lr" in m]
    assert len(lrs) == cfg.train.steps
    last = 0.01 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 5 / 6)))  # the 6th step: 5 of 6 done
    assert lrs[0] == pytest.approx(0.01) and lrs[-1] == pytest.approx(last)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))  # falls at every step
    assert r.state.optimizer["param_groups"][0]["lr"] == pytest.approx(lrs[-1])
    more = train_gradient(cfg, start=r.state)  # a warm restart: the call anneals over its own budget
    assert more.history[0][1]["train/lr"] == pytest.approx(0.01)
    plain = train_gradient(smoke("train.lr=0.01"))
    assert all("train/lr" not in m for _, m in plain.history)
    assert not torch.equal(plain.state_dict["projections.input.W"], r.state_dict["projections.input.W"])


def test_the_lineage_horizon_by_hand():
    tc = smoke("train.lr=0.01", "train.lr_schedule=cosine", "train.lr_final=0.2", "train.lr_horizon_minutes=1").train
    assert scheduled_lr(tc, 0, 0.0, math.inf, 0.0) == pytest.approx(0.01)
    assert scheduled_lr(tc, 0, 0.0, math.inf, 30.0) == pytest.approx(0.006)  # half the horizon behind the state
    assert scheduled_lr(tc, 999, 15.0, 20.0, 15.0) == pytest.approx(0.006)  # the call's steps and budget: not used
    assert scheduled_lr(tc, 0, 10.0, math.inf, 5.0) == pytest.approx(
        0.01 * (0.2 + 0.8 * (1 + math.sqrt(0.5)) / 2)
    )  # p = 1/4
    assert scheduled_lr(tc, 0, 10.0, math.inf, 80.0) == pytest.approx(0.002)  # past the horizon: the final rate


def test_a_continued_run_goes_on_at_its_lineages_rate():
    from dataclasses import replace

    cfg = smoke("train.lr=0.01", "train.lr_schedule=cosine", "train.lr_final=0.1", "train.lr_horizon_minutes=1")
    first = train_gradient(cfg)
    lrs = [m["train/lr"] for _, m in first.history]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    more = train_gradient(cfg, start=first.state)  # no warm restart: on from the lineage's CPU
    assert more.history[0][1]["train/lr"] <= lrs[-1] < 0.01
    half = train_gradient(cfg, start=replace(first.state, cpu_s=30.0))  # half the horizon behind it
    assert half.history[0][1]["train/lr"] <= 0.01 * (0.1 + 0.9 * 0.5) + 1e-12
    old = train_gradient(cfg, start=replace(first.state, cpu_s=600.0))  # long past it
    assert all(m["train/lr"] == pytest.approx(0.001) for _, m in old.history if "train/lr" in m)
    from hybridopt.config import ConfigError

    with pytest.raises(ConfigError, match="lr_horizon_minutes anneals the rate: it needs lr_schedule: cosine"):
        smoke("train.lr_horizon_minutes=1")


def test_keep_best_ends_on_the_best_evaluation():
    cfg = smoke("train.lr=0.05", "train.eval_every=1", "train.steps=8")
    r = train_gradient(smoke("train.lr=0.05", "train.eval_every=1", "train.steps=8", "train.keep_best=true"))
    evals = [(s, m["eval/accuracy"]) for s, m in r.history if "eval/accuracy" in m]
    top = max(a for _, a in evals)
    best_step = next(s for s, a in evals if a == top)  # the first of the best
    assert best_step < 8  # this seed falls after its best, so the test can tell the two apart
    assert r.fitness == top and r.final_metrics["best_step"] == best_step
    assert r.state.step == 8 and r.steps == 8  # the steps after it still count
    at_best = train_gradient(smoke("train.lr=0.05", "train.eval_every=1", f"train.steps={best_step}"))
    for k, v in at_best.state_dict.items():  # the same trajectory, stopped at the best
        assert torch.equal(r.state.model[k], v), k
    assert at_best.state.optimizer["state"][0]["exp_avg"].equal(r.state.optimizer["state"][0]["exp_avg"])
    task, net = build(cfg)
    net.load_state_dict(r.state.model)
    assert evaluate(net, task, cfg)["eval/accuracy"] == top
    last = train_gradient(cfg)  # without keep_best: the last step's network
    assert last.fitness == evals[-1][1] < top and "best_step" not in last.final_metrics


def test_continuing_leaves_the_start_state_as_it_was():
    """Two continuations of one state (two children of a parent, two branches of a checkpoint)
    are the same run: training from a state does not step that state's moments in place."""
    first = train_gradient(smoke("train.steps=3"))
    moments = {i: {k: v.clone() for k, v in m.items()} for i, m in first.state.optimizer["state"].items()}
    a = train_gradient(smoke("train.steps=3"), start=first.state)
    for i, m in first.state.optimizer["state"].items():
        for k, v in m.items():
            assert torch.equal(v, moments[i][k]), (i, k)
    b = train_gradient(smoke("train.steps=3"), start=first.state)
    assert a.fitness == b.fitness
    for k, v in a.state.model.items():
        assert torch.equal(b.state.model[k], v), k


def test_keep_best_continuation_never_ends_below_its_start():
    first = train_gradient(smoke("train.lr=0.05", "train.eval_every=1", "train.steps=8", "train.keep_best=true"))
    more = ("train.lr=0.05", "train.eval_every=1", "train.steps=4")
    fell = train_gradient(smoke(*more), start=first.state)  # this continuation falls on every step
    assert all(m["eval/accuracy"] < first.fitness for _, m in fell.history if "eval/accuracy" in m)
    kept = train_gradient(smoke(*more, "train.keep_best=true"), start=first.state)
    assert kept.fitness == first.fitness and kept.final_metrics["best_step"] == first.state.step
    assert kept.state.step == first.state.step + 4  # the steps still count
    for k, v in first.state.model.items():  # it ends on the state it started from, moments too
        assert torch.equal(kept.state.model[k], v), k
    assert kept.state.optimizer["state"][0]["exp_avg"].equal(first.state.optimizer["state"][0]["exp_avg"])


def test_frozen_parameters_stay_and_the_rest_train():
    cfg = smoke("plasticity.readout.rule=oja", "train.freeze=[input, b_hidden, readout.plasticity]")
    _, net0 = build(cfg)
    r = train_gradient(cfg)
    assert r.status == "FINISHED"
    before = net0.state_dict()
    groups = net0.parameter_groups()
    held = {n for n, g in groups.items() if n.startswith("projections.input.")} | {"b_hidden"}
    held |= {n for n, g in groups.items() if n.startswith("projections.readout.") and g == "plasticity"}
    assert "projections.readout.alpha" in held and "projections.input.alpha" in held
    for name in groups:
        moved = not torch.equal(before[name], r.state_dict[name])
        assert moved != (name in held), name
    # Adam kept no moments for what it never stepped
    params = [n for n, _ in net0.named_parameters()]
    moments = r.state.optimizer["state"]
    assert {params[i] for i in moments} == set(groups) - held


def test_freeze_steps_ends_the_freeze_on_the_runs_own_step_count():
    cfg = smoke("train.freeze=[recurrent]", "train.freeze_steps=3", "train.steps=3")
    first = train_gradient(cfg)
    _, net0 = build(cfg)
    w0 = net0.state_dict()["projections.recurrent.W"]
    assert torch.equal(first.state_dict["projections.recurrent.W"], w0)  # steps 0-2: held
    more = train_gradient(cfg, start=first.state)  # steps 3-5: trained
    assert not torch.equal(more.state_dict["projections.recurrent.W"], w0)


def test_freeze_names_are_checked():
    from hybridopt.config import ConfigError

    with pytest.raises(ConfigError, match="cannot freeze 'hidden'"):
        smoke("train.freeze=[hidden]")
    with pytest.raises(ConfigError, match="train.freeze: task 'locomotion' is trained by the search gradient"):
        load_config(CONFIGS / "smoke_locomotion.yaml", ["train.freeze=[input]"])


def test_a_training_run_flushes_subnormal_floats():
    """Training sets its thread to flush subnormals to zero (a geometrically decaying trace
    would otherwise slow every step that meets one): after a run, float32 ``2^-140`` reads 0
    while ``2^-100`` (a normal float) does not."""
    torch.set_flush_denormal(False)
    tiny = torch.tensor([2.0**-70], dtype=torch.float32)
    assert (tiny * tiny).item() > 0  # 2^-140: subnormal, kept
    r = train_gradient(smoke("train.steps=1"))
    assert r.status == "FINISHED"
    assert (tiny * tiny).item() == 0.0 and (tiny * 2.0**-30).item() == 2.0**-100


def test_the_kernel_weighs_its_compile_against_the_candidates_whole_budget():
    """A rung's call trains a share of ``train.cpu_minutes``: the kernel is chosen for the whole
    (a pools network, which only the step kernels run, compiles from 2 CPU-minutes on)."""
    from hybridopt.snn.kernels import STEPWISE_COMPILE_MIN_CPU_S
    from hybridopt.train.gradient import kernel_budget

    tc = smoke("train.cpu_minutes=5", "train.steps=1000").train
    assert kernel_budget(tc, 75.0).cpu_s == 300.0 >= STEPWISE_COMPILE_MIN_CPU_S
    assert kernel_budget(tc, 75.0).pays_stepwise_compile
    assert kernel_budget(tc, 900.0).cpu_s == 900.0
    assert not kernel_budget(smoke("train.cpu_minutes=1").train, 30.0).pays_stepwise_compile
    # the noisy pools search's candidates (4 CPU-minutes, the first rung half of it) compile
    assert kernel_budget(smoke("train.cpu_minutes=4", "train.steps=1000").train, 120.0).pays_stepwise_compile
