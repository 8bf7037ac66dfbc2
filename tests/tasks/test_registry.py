"""The task registry: a task registered at run time is a task like the built-in ones for the
config, the search's genes and the inner loop; what does not fit is refused, named."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, ClassVar

import pytest
from pydantic import Field

from hybridopt.config import ConfigError, parse_config
from hybridopt.search.genome import GenomeSpace
from hybridopt.tasks import TASKS, TaskSection, make_task, register_task, task_names
from hybridopt.tasks.sections import CueAssociationConfig
from hybridopt.train.loops import CONTROL, task_kind


class CountingConfig(TaskSection):
    kind: ClassVar[str] = CONTROL
    length: Annotated[int, Field(ge=1)] = 3


@pytest.fixture
def counting() -> Iterator[type]:
    snapshot = dict(TASKS)

    @register_task("counting", CountingConfig)
    class Counting:
        def __init__(self, cfg: CountingConfig) -> None:
            self.cfg = cfg

    try:
        yield Counting
    finally:
        TASKS.clear()
        TASKS.update(snapshot)


def test_a_registered_task_is_validated_dumped_and_built_through_its_own_section(counting: type):
    cfg = parse_config({"task": {"name": "counting", "length": 5}})
    assert type(cfg.task) is CountingConfig and cfg.task.length == 5
    assert cfg.model_dump(mode="json")["task"] == {"name": "counting", "length": 5}  # its own keys survive
    assert parse_config(cfg.model_dump(mode="json")) == cfg
    assert task_kind(cfg.task) == CONTROL  # the inner loop is the section's
    task = make_task(cfg.task)
    assert isinstance(task, counting) and task.cfg is cfg.task
    assert "counting" in task_names()
    with pytest.raises(ConfigError, match=r"^task.length: Input should be greater than or equal to 1$"):
        parse_config({"task": {"name": "counting", "length": 0}})
    with pytest.raises(ConfigError, match=r"^task.n_cues: unknown key$"):  # another task's key
        parse_config({"task": {"name": "counting", "n_cues": 3}})


def test_a_search_gene_on_a_registered_task_key_is_checked_over_its_range(counting: type):
    genes = {"task.length": {"low": 1, "high": 4, "integer": True}}
    cfg = parse_config({"task": {"name": "counting"}, "search": {"genes": genes}})
    GenomeSpace.from_config(cfg.search).validate(cfg)
    bad = parse_config({"task": {"name": "counting"}, "search": {"genes": {"task.length": {"choices": [2, 0]}}}})
    with pytest.raises(ConfigError, match=r"search.genes.task.length = 0: task.length"):
        GenomeSpace.from_config(bad.search).validate(bad)


def test_an_unknown_task_is_one_line_naming_the_known_ones(counting: type):
    with pytest.raises(ConfigError) as e:
        parse_config({"task": {"name": "delayed_match"}})
    assert "unknown task 'delayed_match'" in str(e.value) and "counting" in str(e.value)
    assert "HYBRIDOPT_PLUGINS" in str(e.value) and "\n" not in str(e.value)


def test_a_name_is_registered_once_and_a_section_belongs_to_its_task(counting: type):
    with pytest.raises(ValueError, match="registered already"):
        register_task("counting", CueAssociationConfig, "x:y")
    with pytest.raises(TypeError, match="subclass TaskSection"):
        register_task("other", dict, "x:y")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="section of task"):
        CountingConfig(name="cue_association")
