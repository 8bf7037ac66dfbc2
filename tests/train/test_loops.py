"""The inner-loop registry: every task has a loop, and what depends on a task's kind (training,
the sections a run logs, a candidate's budget, evaluation of saved weights) asks the registry."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from hybridopt.config import load_config, parse_config
from hybridopt.search.halving import budget_fraction, scaled_budget
from hybridopt.tasks import TASKS, task_names
from hybridopt.tracking import run_params
from hybridopt.train import initial_model, train_candidate
from hybridopt.train.loops import CONTROL, GRADIENT, LOOPS, Budget, InnerLoop, inner_loop, task_kind
from hybridopt.train.result import TrainResult
from tests.conftest import CONFIGS


def test_every_registered_task_has_a_loop_and_its_config_the_same_kind():
    assert set(TASKS) == set(task_names())  # every task has a config section, and each declares its loop
    for name in TASKS:
        assert task_kind(parse_config({"task": {"name": name}}).task) == TASKS[name].kind in LOOPS, name
    assert task_kind(parse_config({"task": {"name": "locomotion"}}).task) == CONTROL
    assert {loop.kind for loop in LOOPS.values()} == {GRADIENT, CONTROL}
    assert {loop.section for loop in LOOPS.values()} == {"train", "es"}


@pytest.mark.parametrize(
    ("config", "kind", "trained", "unused", "steps"),
    [
        ("smoke.yaml", GRADIENT, "train", "es", "steps"),
        ("smoke_locomotion.yaml", CONTROL, "es", "train", "generations"),
    ],
)
def test_a_run_logs_and_budgets_the_section_of_its_loop(config: str, kind: str, trained: str, unused: str, steps: str):
    cfg = load_config(CONFIGS / config, [f"{trained}.{steps}=8", f"{trained}.cpu_minutes=1"])
    loop = inner_loop(cfg)
    assert loop.kind == kind and loop.section == trained and loop.unused_sections == {unused}
    sections = {k.split(".")[0] for k in run_params(cfg)}
    assert trained in sections and unused not in sections
    part, cpu = budget_fraction(cfg, 0.5, 1.0)
    assert getattr(getattr(part, trained), steps) == 4 and cpu == pytest.approx(30.0)
    assert getattr(part, unused) == getattr(cfg, unused)
    big = getattr(scaled_budget(cfg, 2.5), trained)
    assert (getattr(big, steps), big.cpu_minutes) == (20, 2.5)
    assert loop.budget.steps_of(cfg) == 8 and loop.budget.minutes_of(cfg) == 1


def test_budgets_and_logged_sections_follow_the_registry(monkeypatch: pytest.MonkeyPatch):
    cfg = load_config(CONFIGS / "smoke.yaml", ["es.generations=10"])
    # the same task, declared a control task: its budget and its logged sections move with it
    monkeypatch.setattr(type(cfg.task), "kind", CONTROL)
    assert inner_loop(cfg) is LOOPS[CONTROL]
    part, _ = budget_fraction(cfg, 0.0, 0.5)
    assert part.es.generations == 5 and part.train == cfg.train
    sections = {k.split(".")[0] for k in run_params(cfg)}
    assert "es" in sections and "train" not in sections
    # a loop's budget is where its entry says
    monkeypatch.setattr(LOOPS[CONTROL], "budget", Budget("es", "popsize"))
    assert scaled_budget(cfg, 2).es.popsize == 2 * cfg.es.popsize


class _Recorder(InnerLoop):
    kind = "recorder"
    budget = Budget("train", "steps")

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def trainer(self):
        def train(cfg, progress=None, *, start=None, cpu_budget_s=None) -> TrainResult:
            self.calls.append(("train", cpu_budget_s))
            return TrainResult(fitness=1.0)

        return train

    def initial_model(self, cfg) -> dict[str, Any]:
        self.calls.append(("initial_model", None))
        return {"w": 0}

    def load(self, cfg, state_dict):
        raise NotImplementedError

    def evaluate(self, cfg, loaded):
        raise NotImplementedError


def test_training_and_the_initial_model_come_from_the_task_kinds_loop(monkeypatch: pytest.MonkeyPatch):
    cfg = load_config(CONFIGS / "smoke.yaml")
    recorder = _Recorder()
    monkeypatch.setitem(LOOPS, GRADIENT, recorder)
    assert train_candidate(cfg, cpu_budget_s=3.0).fitness == 1.0
    assert initial_model(cfg) == {"w": 0}
    assert recorder.calls == [("train", 3.0), ("initial_model", None)]


def test_the_es_loop_refuses_a_gradient_task():
    from hybridopt.train.es import build_policy

    with pytest.raises(ValueError, match="control tasks"):
        build_policy(load_config(CONFIGS / "smoke.yaml"))


def test_looking_up_a_loop_loads_neither_torch_nor_a_simulator():
    code = (
        "import sys\n"
        "from hybridopt.config import load_config\n"
        "from hybridopt.train.loops import inner_loop\n"
        f"cfg = load_config({str(CONFIGS / 'smoke.yaml')!r})\n"
        "loop = inner_loop(cfg)\n"
        "print(loop.kind, loop.budget.steps_of(cfg), sorted(loop.unused_sections),"
        " sorted(m for m in ('torch', 'mujoco', 'gymnasium') if m in sys.modules))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split("\n")[-2] == "gradient 6 ['es'] []"
