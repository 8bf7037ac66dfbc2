"""The Python API (:mod:`hybridopt.api`): a search and a training from Python, their tables and
winners, and bad input as the typed one-line errors, before anything is written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from hybridopt import api
from hybridopt.errors import CheckpointError, ConfigError, WeightsError
from tests.conftest import CONFIGS, REPO
from tests.search.conftest import ray_tmp  # noqa: F401  (a private Ray temp dir, its processes killed after)
from tests.search.searching import SMOKE, runs_of, search_env

# The smoke search, one generation: 4 candidates through the rungs [0.25, 0.5, 1.0] of 4 steps.
ONE_GENERATION = ["search.generations=1"]

SEARCH_SCRIPT = """
import json, sys
from hybridopt import api

result = api.search(sys.argv[1], overrides=sys.argv[3:], tracking_uri=sys.argv[2], seed=1)
table = result.candidates()
cfg, task, net = api.load(result.best_weights("winner"))
best = result.best_config()
print(json.dumps({
    "type": type(result).__name__,
    "parent": result.parent_run_id,
    "best_fitness": result.best_fitness,
    "best_genome": result.best_genome,
    "columns": list(table.columns),
    "rows": json.loads(table.to_json(orient="records")),
    "loaded_genome": {g: cfg.model_dump(mode="json")[g.split(".")[0]] for g in result.best_genome},
    "best_config_equal": best == cfg,
    "seed": cfg.seed,
    "net": type(net).__name__,
    "evaluated": api.evaluate("winner/weights.pt"),
}))
"""


def test_a_search_from_python_in_a_fresh_process_returns_its_candidates_and_winner(
    tmp_path: Path,
    ray_tmp: str,  # noqa: F811  (the fixture imported above)
):
    store = f"sqlite:///{tmp_path / 'm.db'}"
    args = [SMOKE, store, *ONE_GENERATION, f"search.checkpoint={tmp_path / 'ckpt'}"]
    p = subprocess.run(
        [sys.executable, "-c", SEARCH_SCRIPT, *args],
        cwd=tmp_path,
        env=search_env(ray_tmp),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1, p.stdout  # the API prints nothing of its own
    out = json.loads(lines[0])
    assert out["type"] == "SearchResult"
    _, parents, children = runs_of(store)
    assert [r.info.run_id for r in parents] == [out["parent"]]
    rows = out["rows"]
    assert len(rows) == len(children) == 4  # one row per candidate, as the store holds them
    assert {r["run_id"] for r in rows} == {c.info.run_id for c in children}
    genes = list(out["best_genome"])
    assert out["columns"][2 : 2 + len(genes)] == genes and len(genes) == 6
    assert {"fitness", "status", "rung", "inherited_from", "cpu_s", "wall_s"} <= set(out["columns"])
    by_id = {c.info.run_id: c for c in children}
    for r in rows:
        assert r["fitness"] == pytest.approx(by_id[r["run_id"]].data.metrics["fitness"])
        assert r["rung"] == int(by_id[r["run_id"]].data.tags["hybridopt.rung"])
    assert sorted(r["rung"] for r in rows) == [0, 0, 1, 2]  # halving: 4 -> 2 -> 1
    assert out["best_fitness"] == pytest.approx(max(r["fitness"] for r in rows))
    assert out["best_config_equal"] and out["seed"] == 1 and out["net"] == "PlasticSNN"
    # the winner's weights rebuild its genome, and evaluate to its fitness
    for path, value in out["best_genome"].items():
        section, *rest = path.split(".")
        node = out["loaded_genome"][path]
        for k in rest:
            node = node[k]
        assert node == pytest.approx(value) if isinstance(value, float) else node == value
    assert out["evaluated"]["eval/accuracy"] == pytest.approx(out["best_fitness"], abs=1e-6)


def test_a_training_from_python_is_one_run_whose_weights_evaluate_to_its_fitness(tmp_path: Path):
    store = f"sqlite:///{tmp_path / 'm.db'}"
    seen = []
    run = api.train(CONFIGS / "smoke.yaml", tracking_uri=store, overrides=["train.steps=4"], progress=seen.append)
    assert not run.failed and run.fitness is not None
    stored = MlflowClient(store).get_run(run.run_id)
    assert stored.info.status == "FINISHED" and stored.data.metrics["fitness"] == pytest.approx(run.fitness)
    assert stored.data.params["train.steps"] == "4"
    assert run.metrics["train_steps"] == 4  # and its cost, as the store has it
    assert run.metrics["cpu_time_s"] == pytest.approx(stored.data.metrics["cpu_time_s"])
    curves = run.curves()
    assert list(curves["step"])[-1] == 4 and "train/loss" in curves.columns
    assert seen and seen[-1].done == 4  # progress went to the callback
    weights = run.weights(tmp_path / "w")
    assert api.evaluate(weights)["eval/accuracy"] == pytest.approx(run.fitness, abs=1e-6)
    cfg, task, net = api.load(weights)
    assert cfg == run.config and task.name == "cue_association" and type(net).__name__ == "PlasticSNN"


@pytest.mark.parametrize(
    ("config", "kwargs", "error", "message"),
    [
        ("nope.yaml", {}, ConfigError, "config file not found"),
        ("smoke_search.yaml", {"overrides": ["search.population=0"]}, ConfigError, "search.population"),
        ("smoke_search.yaml", {"overrides": ["task.name=delayed_match"]}, ConfigError, "unknown task 'delayed_match'"),
        ("smoke_search.yaml", {"plugins": ["no_such_module"]}, ConfigError, "cannot import 'no_such_module'"),
        ("smoke.yaml", {}, ConfigError, "no search section"),
        ("smoke_search.yaml", {"resume": True}, CheckpointError, "no checkpoint"),
    ],
)
def test_bad_input_raises_its_typed_one_line_error_before_the_store_is_touched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: str, kwargs: dict, error: type, message: str
):
    monkeypatch.setenv("HYBRIDOPT_PLUGINS", "")
    store = f"sqlite:///{tmp_path / 'm.db'}"
    overrides = [*kwargs.pop("overrides", []), f"search.checkpoint={tmp_path / 'ckpt'}"]
    if config == "smoke.yaml":
        overrides = []
    with pytest.raises(error) as e:
        api.search(CONFIGS / config, tracking_uri=store, overrides=overrides, **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not list(tmp_path.iterdir())


def test_an_earlier_checkpoint_is_neither_replaced_nor_resumed_unasked(tmp_path: Path):
    ckpt = tmp_path / "ckpt"
    ckpt.write_bytes(b"an earlier search")
    store = f"sqlite:///{tmp_path / 'm.db'}"
    with pytest.raises(CheckpointError, match="--resume continues it, --fresh starts over"):
        api.search(CONFIGS / "smoke_search.yaml", tracking_uri=store, overrides=[f"search.checkpoint={ckpt}"])
    with pytest.raises(CheckpointError):
        api.search(
            CONFIGS / "smoke_search.yaml", tracking_uri=store, overrides=[f"search.checkpoint={ckpt}"], resume=True
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    with pytest.raises(WeightsError, match="not found"):
        api.load(tmp_path / "missing.pt")


def test_a_config_may_be_a_mapping_or_a_config_with_overrides_and_seed_applied():
    raw = {"task": {"name": "pattern_memory", "n_patterns": 2}}
    cfg = api.resolve_config(raw, ["task.n_patterns=4"], seed=7)
    assert (cfg.task.n_patterns, cfg.seed) == (4, 7) and raw["task"]["n_patterns"] == 2
    assert api.resolve_config(cfg) is cfg
    assert api.resolve_config(cfg, ["network.hidden=9"]).network.hidden == 9
    with pytest.raises(ConfigError, match="not int"):
        api.resolve_config(3)  # type: ignore[arg-type]


def test_importing_the_package_stays_light_and_names_its_api():
    code = (
        "import sys, hybridopt\n"
        "light = sorted(m for m in ('torch', 'ray', 'mlflow', 'pydantic', 'pandas') if m in sys.modules)\n"
        "from hybridopt import api, search, SearchResult, ConfigError, register_task, TaskSection\n"
        "print(light, search is api.search, SearchResult is api.SearchResult, ConfigError.__module__)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["[]", "True", "True", "hybridopt.errors"]
