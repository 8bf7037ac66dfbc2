"""cluster/rayjob.yaml: a KubeRay RayJob (ray.io/v1) with the fields the operator requires,
running the same entry point as ``ray submit``."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from hybridopt.entry.cluster import build_parser

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def documents() -> dict[str, dict]:
    docs = list(yaml.safe_load_all((REPO / "cluster" / "rayjob.yaml").read_text()))
    return {d["kind"]: d for d in docs}


@pytest.fixture(scope="module")
def job(documents: dict[str, dict]) -> dict:
    return documents["RayJob"]


def containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def test_rayjob_header(job: dict) -> None:
    assert job["apiVersion"] == "ray.io/v1"
    assert job["kind"] == "RayJob"
    assert job["metadata"]["name"]


def test_entrypoint_runs_the_submit_script_with_a_shipped_config(job: dict) -> None:
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "python"
    script = Path(argv[1])
    assert script.as_posix() == "/home/ray/hybridopt/cluster/submit_search.py"
    assert (REPO / "cluster" / script.name).is_file()
    args = build_parser().parse_args(["search", *argv[2:]])  # what submit_search.py passes on
    assert (REPO / args.config).is_file()
    # The image's project copy is where the entry point looks by default (~ is /home/ray).
    assert args.project.replace("~", "/home/ray") == script.parent.parent.as_posix()


def test_cluster_spec_has_the_required_fields(job: dict) -> None:
    spec = job["spec"]["rayClusterSpec"]
    assert isinstance(spec["rayVersion"], str)
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    (head_container,) = containers(head)
    assert head_container["name"] and head_container["image"]
    workers = spec["workerGroupSpecs"]
    assert workers
    for group in workers:
        assert group["groupName"]
        assert isinstance(group["rayStartParams"], dict)
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        (container,) = containers(group)
        assert container["name"] and container["image"] == head_container["image"]  # hybridopt everywhere
        assert container["resources"]["requests"]["cpu"]


def test_the_mlflow_store_is_on_a_volume_that_outlives_the_cluster(job: dict, documents: dict[str, dict]) -> None:
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]
    args = build_parser().parse_args(["search", *shlex.split(job["spec"]["entrypoint"])[2:]])
    store = args.store.replace("~", "/home/ray")
    (mount,) = [m for m in containers(head)[0]["volumeMounts"] if m["mountPath"] == store]
    (volume,) = [v for v in head["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert documents["PersistentVolumeClaim"]["metadata"]["name"] == claim
