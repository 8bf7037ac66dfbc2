"""The service face's pieces that need no cluster (the whole workflow: tests/cluster/test_jobs_e2e.py)."""

from __future__ import annotations

import pytest

from hybridopt.config import load_config
from hybridopt.entry.service import checkpoint_path, connect, entrypoint, jobs_address
from hybridopt.errors import RayConnectError, UsageError
from tests.cluster.ray_ports import free_ports
from tests.conftest import CONFIGS

SMOKE = CONFIGS / "smoke_search.yaml"


def test_the_address_is_the_dashboards_http_one(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(UsageError, match="no cluster address"):
        jobs_address(None)
    for bad in ("auto", "127.0.0.1:6379", "ray://head:10001"):
        with pytest.raises(UsageError, match="expected the dashboard's http://HOST:PORT"):
            jobs_address(bad)
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265/")
    assert jobs_address(None) == "http://head:8265"
    assert jobs_address("https://other:443") == "https://other:443"


def test_an_address_where_nothing_listens_is_one_line():
    (port,) = free_ports(1)
    with pytest.raises(RayConnectError, match=rf"cannot reach the Ray Jobs API at http://127.0.0.1:{port}: "):
        connect(f"http://127.0.0.1:{port}")


def test_a_search_keeps_its_checkpoint_across_what_a_resume_may_change():
    key = checkpoint_path(load_config(SMOKE), "my/search.yaml")
    assert key.startswith("checkpoints/smoke_search/search-seed0-") and key.endswith(".ckpt")
    same = ["search.generations=7", "search.final_budget=2", "search.max_concurrent=1", "ray.num_cpus=8"]
    assert checkpoint_path(load_config(SMOKE, same), "elsewhere/search.yaml") == key
    for other in (["seed=1"], ["train.lr=0.01"], ["experiment=mine"], ["search.population=6"]):
        assert checkpoint_path(load_config(SMOKE, other), "my/search.yaml") != key, other
    assert checkpoint_path(load_config(SMOKE), "my/other.yaml") != key


def test_the_job_runs_the_cluster_entry_point_on_the_shipped_config():
    assert entrypoint(False, False) == "python -m hybridopt.entry.cluster search search.yaml"
    assert entrypoint(True, False).endswith(" --resume") and entrypoint(False, True).endswith(" --fresh")


def test_a_plugin_that_is_one_module_file_travels_in_the_jobs_working_directory(
    tmp_path, monkeypatch: pytest.MonkeyPatch
):
    from hybridopt.entry.service import ship_plugins

    source = tmp_path / "src"
    (source / "lab").mkdir(parents=True)
    (source / "my_rules_here.py").write_text("X = 1\n")
    (source / "lab" / "__init__.py").write_text("")
    (source / "lab" / "tasks.py").write_text("Y = 2\n")
    monkeypatch.syspath_prepend(str(source))
    monkeypatch.setenv("HYBRIDOPT_PLUGINS", "my_rules_here, lab.tasks,lab")
    job = tmp_path / "job"
    job.mkdir()
    assert ship_plugins(job) == ["my_rules_here"]  # a package, or a module in one, is installed on the cluster
    assert sorted(p.name for p in job.iterdir()) == ["my_rules_here.py"]
    assert (job / "my_rules_here.py").read_text() == "X = 1\n"
