"""The search checkpoint: format 1 as the code before the typed checkpoint wrote it reads back
field by field, is written again as the same data, and still resumes a search.

``data/after_two_generations.ckpt`` is the checkpoint ``hybridopt search configs/smoke_search.yaml
--seed 3`` wrote after its last generation, ``data/before_generation_0.ckpt`` the one the same
search writes before generation 0 trains; both by the code of 2026-12-03 (format 1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from hybridopt.search.checkpoint import FAILED_FITNESS, CheckpointError, SearchCheckpoint
from tests.search.searching import runs_of, search

DATA = Path(__file__).parent / "data"


def raw(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def same_data(a: Any, b: Any) -> bool:
    """Equal plain data, tensors compared by value."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_data(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_data(x, y) for x, y in zip(a, b))
    return a == b


def test_a_format_1_checkpoint_reads_back_typed_and_is_written_as_the_same_data(tmp_path: Path):
    path = DATA / "after_two_generations.ckpt"
    old = raw(path)
    ck = SearchCheckpoint.load(path, old["config"])
    assert ck.generation == 1 and ck.parent_run_id == old["parent_run_id"]
    assert len(ck.records) == 8 and ck.best_history == old["best_history"]
    first = ck.records[0]
    assert (first.generation, first.index, first.status, first.rung) == (0, 0, "FINISHED", 0)
    assert first.genome == old["records"][0]["values"] and first.fitness == old["records"][0]["fitness"]
    assert first.wall_s == old["records"][0]["wall_time"]
    best, state_dict = ck.best
    assert best.fitness == max(r.fitness for r in ck.records) and best.run_id == old["best"]["record"]["run_id"]
    assert state_dict.keys() == old["best"]["state_dict"].keys()
    ck.save(tmp_path / "again.ckpt")
    assert same_data(raw(tmp_path / "again.ckpt"), old)


def test_a_failed_candidate_keeps_the_failed_fitness_on_disk(tmp_path: Path):
    path = DATA / "after_two_generations.ckpt"
    ck = SearchCheckpoint.load(path, raw(path)["config"])
    ck.records[0].status, ck.records[0].fitness, ck.records[0].reason = "FAILED", None, "diverged"
    ck.save(tmp_path / "c.ckpt")
    on_disk = raw(tmp_path / "c.ckpt")["records"][0]
    assert on_disk["fitness"] == FAILED_FITNESS and on_disk["reason"] == "diverged"
    assert SearchCheckpoint.load(tmp_path / "c.ckpt", raw(path)["config"]).records[0].fitness is None


def test_a_checkpoint_of_another_config_is_refused():
    path = DATA / "after_two_generations.ckpt"
    config = raw(path)["config"]
    other = {**config, "train": {**config["train"], "steps": 5}}
    with pytest.raises(CheckpointError, match="differs at: train.steps"):
        SearchCheckpoint.load(path, other)
    extended = {**config, "search": {**config["search"], "generations": 9}}  # a search may be extended
    assert SearchCheckpoint.load(path, extended).generation == 1


@pytest.mark.slow
def test_a_format_1_checkpoint_written_before_generation_0_resumes_the_search(tmp_path: Path, ray_tmp: str):
    """The search resumes from the old file: its population is generation 0's, it runs to its end."""
    from hybridopt.tracking import Tracker

    old = raw(DATA / "before_generation_0.ckpt")
    store = f"sqlite:///{tmp_path / 'm.db'}"
    parent = Tracker(store, old["config"]["experiment"]).start_run("killed in generation 0", "search")
    (tmp_path / "checkpoints").mkdir()
    torch.save({**old, "parent_run_id": parent}, tmp_path / old["config"]["search"]["checkpoint"])
    (tmp_path / "search.yaml").write_text(yaml.safe_dump(old["config"]))
    p = search([str(tmp_path / "search.yaml"), "--tracking-uri", store, "--resume"], tmp_path, ray_tmp)
    assert p.returncode == 0, p.stderr
    client, (run,), children = runs_of(store)
    assert run.info.run_id == parent and run.info.status == "FINISHED"
    assert len(children) == 4 + 4 and {c.info.status for c in children} == {"FINISHED"}
    generation_0 = sorted(
        (c for c in children if c.data.tags["hybridopt.generation"] == "0"),
        key=lambda c: int(c.data.tags["hybridopt.candidate"]),
    )
    units = [yaml.safe_load(c.data.tags["hybridopt.genome_unit"]) for c in generation_0]
    assert torch.equal(torch.tensor(units), old["population"])  # the population the old file holds
