"""cluster/run.yaml and cluster/aws.yaml pass Ray's own cluster-config validation, and agree
with the entry point on where the project, its environment and the MLflow server are."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from jsonschema import ValidationError
from ray.autoscaler._private.util import prepare_config, validate_config

from hybridopt.entry.cluster import DEFAULT_PROJECT

REPO = Path(__file__).resolve().parents[2]
CONFIGS = ["run.yaml", "aws.yaml"]


def load(name: str) -> dict:
    return yaml.safe_load((REPO / "cluster" / name).read_text())


def ray_validated(config: dict) -> dict:
    """What ``ray up`` does before launching anything: fill in the provider's defaults (for
    the local provider: its single node type), then check the result against Ray's schema."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.mark.parametrize("name", CONFIGS)
def test_ray_accepts_the_cluster_config(name: str) -> None:
    prepared = ray_validated(load(name))
    assert prepared["cluster_name"] == "hybridopt"
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize("name", CONFIGS)
def test_ray_validation_rejects_a_misspelt_key(name: str) -> None:
    config = load(name)
    config["setup_comands"] = config.pop("setup_commands")
    with pytest.raises(ValidationError, match="setup_comands"):
        ray_validated(config)


def test_run_yaml_is_the_local_provider_with_the_fields_a_user_edits() -> None:
    config = load("run.yaml")
    assert config["provider"]["type"] == "local"
    assert isinstance(config["provider"]["head_ip"], str)
    assert isinstance(config["provider"]["worker_ips"], list)
    assert {"ssh_user", "ssh_private_key"} <= set(config["auth"])
    rows = (REPO / "cluster" / "run.yaml").read_text().splitlines()
    for field in ("head_ip:", "worker_ips:", "ssh_user:", "ssh_private_key:"):
        (line,) = [k for k, row in enumerate(rows) if row.strip().startswith(field)]
        comment = []  # the comment block right above the field
        while rows[line - 1 - len(comment)].strip().startswith("#"):
            comment.append(rows[line - 1 - len(comment)])
        assert any("EDIT" in c for c in comment), f"{field} has no EDIT comment above it"


def test_aws_yaml_declares_its_node_types_resources() -> None:
    config = load("aws.yaml")
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert all(t["resources"].get("CPU", 0) > 0 for t in types.values())
    assert any(t["resources"].get("GPU", 0) > 0 for t in types.values())
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert sum(t.get("min_workers", 0) for t in workers) <= config["max_workers"]


@pytest.mark.parametrize("name", CONFIGS)
def test_project_environment_and_start_commands_agree_with_the_entry_point(name: str) -> None:
    config = load(name)
    # The project lands where the entry point looks for it.
    assert config["file_mounts"] == {DEFAULT_PROJECT: "."}
    assert ".gitignore" in config["rsync_filter"]  # no local venv or MLflow store shipped
    # It is installed into the virtual environment that submit_search.py re-executes into, and
    # that environment is activated in ~/.bashrc, which Ray sources before every command.
    setup = config["setup_commands"]
    assert any("venv ~/hybridopt-venv" in c for c in setup)
    assert any("~/hybridopt-venv/bin/python -m pip install" in c and "~/hybridopt" in c for c in setup)
    assert any("source ~/hybridopt-venv/bin/activate" in c and ">> ~/.bashrc" in c for c in setup)
    submit = (REPO / "cluster" / "submit_search.py").read_text()
    assert '"~/hybridopt-venv"' in submit
    # The head starts Ray, then the MLflow server; workers join the head's GCS port.
    head = config["head_start_ray_commands"]
    (start,) = [k for k, c in enumerate(head) if "ray start --head" in c]
    (mlflow,) = [k for k, c in enumerate(head) if "python -m hybridopt.entry.cluster mlflow" in c]
    assert head[0] == "ray stop" and start < mlflow
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head[start]
    port = next(a for a in head[start].split() if a.startswith("--port=")).split("=")[1]
    assert any(f"--address=$RAY_HEAD_IP:{port}" in c for c in config["worker_start_ray_commands"])
