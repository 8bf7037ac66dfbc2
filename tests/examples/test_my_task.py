"""A task defined only in ``examples/my_task.py``, run through the real command line: it trains,
searches and reports with the plugin loaded, and without it the config is one line, exit 2."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient

from hybridopt.tasks import TASKS
from tests.conftest import REPO, run_cli
from tests.search.conftest import ray_tmp  # noqa: F401  (a private Ray temp dir, its processes killed after)
from tests.search.searching import runs_of

EXAMPLES = REPO / "examples"
PLUGIN = {"PYTHONPATH": f"{REPO}:{EXAMPLES}", "HYBRIDOPT_PLUGINS": "my_task"}


def test_nothing_in_the_package_names_the_example_task():
    named = [p for p in (REPO / "hybridopt").rglob("*.py") if "delayed_match" in p.read_text()]
    assert named == []


def test_the_example_task_draws_what_its_docstring_says():
    registered = dict(TASKS)
    sys.path.insert(0, str(EXAMPLES))
    try:
        from my_task import DelayedMatch, DelayedMatchConfig

        _draws_what_its_docstring_says(DelayedMatch, DelayedMatchConfig)
    finally:  # the other tests see the package's tasks alone
        sys.path.remove(str(EXAMPLES))
        sys.modules.pop("my_task", None)
        TASKS.clear()
        TASKS.update(registered)


def _draws_what_its_docstring_says(DelayedMatch: type, DelayedMatchConfig: type) -> None:
    cfg = DelayedMatchConfig(name="delayed_match", n_stimuli=3, channels=2, distractors=2, rate_on=1.0)
    task = DelayedMatch(cfg)
    batch = task.batch(64, torch.Generator().manual_seed(0))
    assert batch.x.shape == (64, task.steps, 3 * 2 + 1) and 0 < batch.target.mean() < 1
    groups = batch.x[..., :-1].reshape(64, task.steps, 3, 2).amax(-1)  # which stimulus is on, per step
    sample = groups[:, 0].argmax(-1)
    test = groups[:, -1].argmax(-1)
    assert torch.equal((sample == test).float(), batch.target)  # the target is "test is the sample"
    last_distractor = groups[:, task.steps - cfg.test_steps - cfg.gap_steps - 1].argmax(-1)
    assert bool((last_distractor != sample).all())  # the stimulus before the test is never the sample
    assert bool((batch.x[:, -cfg.test_steps :, -1] == 1).all()) and not bool(batch.x[:, : -cfg.test_steps, -1].any())
    y = torch.where(batch.target.bool(), 1.0, -1.0)[:, None, None].expand(64, task.steps, 1)
    assert float(task.fitness(y, batch).mean()) == 1.0 and float(task.fitness(-y, batch).mean()) == 0.0


def test_the_example_task_trains_from_the_command_line_with_its_plugin(tmp_path: Path, store: str):
    p = run_cli(["train", str(EXAMPLES / "my_task.yaml"), "--tracking-uri", store], tmp_path, env=PLUGIN)
    assert p.returncode == 0, p.stderr
    client = MlflowClient(store)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED" and run.data.params["task.name"] == "delayed_match"
    assert run.data.params["task.distractors"] == "1" and "fitness" in run.data.metrics
    assert run.data.metrics["test/chance"] == 0.5


def test_the_example_task_searches_and_reports_from_the_command_line(
    tmp_path: Path,
    ray_tmp: str,  # noqa: F811  (the fixture imported above)
):
    store = f"sqlite:///{tmp_path / 'm.db'}"
    env = {**PLUGIN, "RAY_TMPDIR": ray_tmp}
    argv = ["search", str(EXAMPLES / "my_task_search.yaml"), "--tracking-uri", store]
    p = run_cli([*argv, "--set", f"search.checkpoint={tmp_path / 'ckpt'}"], tmp_path, timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    _, parents, children = runs_of(store)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED" and len(children) == 4
    rates = {float(c.data.params["task.rate_on"]) for c in children}  # the gene on the task's own key
    assert len(rates) > 1 and all(0.3 <= r <= 0.8 for r in rates)
    p = run_cli(["report", "my_task_search", "--tracking-uri", store, "--out", "rep"], tmp_path, env=PLUGIN)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "rep").is_dir() and any((tmp_path / "rep").glob("*.png"))


def test_a_config_naming_the_task_without_its_plugin_is_one_line_and_exit_2(tmp_path: Path, store: str):
    for command in ("train", "search"):
        config = EXAMPLES / ("my_task.yaml" if command == "train" else "my_task_search.yaml")
        p = run_cli([command, str(config), "--tracking-uri", store], tmp_path, env={"HYBRIDOPT_PLUGINS": ""})
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1, p.stderr
        assert "config error: task: unknown task 'delayed_match'" in lines[0] and "HYBRIDOPT_PLUGINS" in lines[0]
    assert not list(tmp_path.iterdir())
