"""The real CLI, in a subprocess, on a temporary SQLite store."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from hybridopt.train.gradient import evaluate
from hybridopt.train.weights import load_weights
from tests.conftest import CONFIGS, run_cli


def test_train_logs_one_complete_run_and_weights_reproduce_eval(tmp_path: Path, store: str):
    cwd = tmp_path / "work"
    cwd.mkdir()
    p = run_cli(["train", str(CONFIGS / "smoke.yaml"), "--tracking-uri", store], cwd=cwd)
    assert p.returncode == 0, p.stderr
    client = MlflowClient(store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["hybridopt.kind"] == "train" and run.info.status == "FINISHED"
    for proj in ("input", "recurrent", "readout"):
        assert f"plasticity.{proj}.rule" in run.data.params
    assert run.data.params["plasticity.input.rule"] == "hebbian"
    assert "plasticity.input.modulation" in run.data.params  # a static projection logs its rule alone
    assert not any(k.split(".")[0] in ("es", "search", "ray", "tracking") for k in run.data.params)
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 6
    evals = client.get_metric_history(run.info.run_id, "eval/accuracy")
    assert len(evals) >= 2
    assert len({m.step for m in evals}) == len(evals)  # one value per step: the last is not logged twice
    assert evals[-1].value == run.data.metrics["fitness"]
    fitness = run.data.metrics["fitness"]
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"weights.pt", "config.yaml", "learning_curves.png"} <= arts
    path = client.download_artifacts(run.info.run_id, "weights.pt", str(tmp_path))
    shown = [
        ln.removeprefix("evaluate again: hybridopt eval ") for ln in p.stdout.splitlines() if "hybridopt eval" in ln
    ]
    assert len(shown) == 1 and Path(shown[0]).read_bytes() == Path(path).read_bytes()  # the path it prints
    cfg, task, net = load_weights(path)
    assert evaluate(net, task, cfg)["eval/accuracy"] == pytest.approx(fitness, abs=1e-7)
    assert not (cwd / "mlruns").exists()  # artifacts live beside the store, not in the cwd
    assert (tmp_path / "mlruns").is_dir()


def test_python_dash_m_and_eval_command(tmp_path: Path, store: str):
    p = run_cli(["train", str(CONFIGS / "smoke.yaml"), "--tracking-uri", store, "--seed", "3"], tmp_path)
    assert p.returncode == 0
    assert " INFO " not in p.stderr + p.stdout  # MLflow's own chatter ("Creating initial ... tables") is off
    weights = next(tmp_path.rglob("weights.pt"))
    p = run_cli(["eval", str(weights)], tmp_path)
    assert p.returncode == 0 and "eval/accuracy" in p.stdout


BAD = {
    "missing file": (["train", "nope.yaml"], "not found"),
    "unknown key": (["train", "SMOKE", "--set", "network.bogus=1"], "network.bogus: unknown key"),
    "unknown rule": (["train", "SMOKE", "--set", "plasticity.input.rule=hebb"], "unknown rule 'hebb'"),
    "negative budget": (["train", "SMOKE", "--set", "train.steps=-5"], "train.steps"),
    "bad override": (["train", "SMOKE", "--set", "oops"], "KEY.PATH=VALUE"),
    "unknown command": (["fly"], "invalid choice"),
    "bad seed": (["train", "SMOKE", "--seed", "x"], "invalid int"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_one_line_exit_2_nothing_written(case: str, tmp_path: Path, store: str):
    args, needle = BAD[case]
    args = [str(CONFIGS / "smoke.yaml") if a == "SMOKE" else a for a in args]
    p = run_cli([*args, "--tracking-uri", store] if args[0] == "train" else args, tmp_path)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], p.stderr
    assert not (tmp_path / "m.db").exists()


def test_invalid_yaml_file(tmp_path: Path, store: str):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: {name: cue_association\nnetwork: [\n")
    p = run_cli(["train", str(bad), "--tracking-uri", store], tmp_path)
    assert p.returncode == 2 and "invalid YAML" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "m.db").exists()


def test_unreachable_tracking_server(tmp_path: Path):
    p = run_cli(["train", str(CONFIGS / "smoke.yaml"), "--tracking-uri", "http://127.0.0.1:9"], tmp_path, timeout=60)
    assert p.returncode == 2 and "unreachable" in p.stderr and "Traceback" not in p.stderr


def test_corrupted_weights_file(tmp_path: Path):
    bad = tmp_path / "weights.pt"
    bad.write_bytes(b"\x00not a torch file")
    p = run_cli(["eval", str(bad)], tmp_path)
    assert p.returncode == 2 and "is not a weights file" in p.stderr and "Traceback" not in p.stderr
    good = tmp_path / "good.pt"
    torch.save({"x": torch.ones(3)}, good)
    bad.write_bytes(good.read_bytes()[:200])  # cut short
    p = run_cli(["eval", str(bad)], tmp_path)
    assert p.returncode == 2 and "corrupted weights file" in p.stderr and "Traceback" not in p.stderr
    torch.save({"something": 1}, bad)
    p = run_cli(["eval", str(bad)], tmp_path)
    assert p.returncode == 2 and "not a hybridopt weights file" in p.stderr


class _RunsCode:
    """Unpickling this calls ``open(path, 'w')``: a file that would write when loaded."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_a_weights_file_that_asks_to_run_code_is_refused(tmp_path: Path):
    bad, marker = tmp_path / "weights.pt", tmp_path / "was-run"
    torch.save({"format": "hybridopt.weights/1", "state_dict": _RunsCode(marker)}, bad)
    p = run_cli(["eval", str(bad)], tmp_path)
    assert p.returncode == 2 and not marker.exists()
    assert p.stderr.strip().splitlines() == [
        f"hybridopt: weights error: {bad} is not a weights file (refused to unpickle: it asks to load io.open)"
    ]


def test_eval_of_a_locomotion_policy_reports_every_condition(tmp_path: Path, store: str):
    p = run_cli(["train", str(CONFIGS / "smoke_locomotion.yaml"), "--tracking-uri", store], tmp_path)
    assert p.returncode == 0, p.stderr
    (run,) = MlflowClient(store).search_runs([e.experiment_id for e in MlflowClient(store).search_experiments()])
    arts = {a.path for a in MlflowClient(store).list_artifacts(run.info.run_id)}
    assert {"learning_curves.png", "returns_by_condition.png"} <= arts  # return per condition, as a bar chart
    p = run_cli(["eval", str(next(tmp_path.rglob("weights.pt")))], tmp_path)
    assert p.returncode == 0, p.stderr
    for cond in ("standard", "crippled_leg", "low_friction", "heavy_body"):
        assert f"eval/return/{cond}" in p.stdout


@pytest.mark.parametrize(
    "address, needle",
    [
        ("127.0.0.1:1", "cannot reach the Ray cluster at 127.0.0.1:1"),
        ("ray://127.0.0.1:1", "cannot reach the Ray cluster at ray://127.0.0.1:1"),
        ("no-port-here", "bad Ray address"),
    ],
)
def test_unreachable_ray_address_fails_fast_and_writes_nothing(address: str, needle: str, tmp_path: Path):
    store = tmp_path / "m.db"
    p = run_cli(
        ["search", str(CONFIGS / "smoke_search.yaml"), "--tracking-uri", f"sqlite:///{store}", "--address", address],
        tmp_path,
        timeout=300,
    )
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in (p.stderr + p.stdout).splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], p.stderr + p.stdout
    assert not store.exists() and not list(tmp_path.iterdir())  # nothing written anywhere
    # "cannot reach" comes from the address probe (a TCP connect, at most 5 s), not from ray.init,
    # which would retry an unreachable cluster for minutes: the wall time is not asserted, since
    # on a loaded machine the imports alone can take longer than the probe.


def test_a_gene_value_inside_its_range_that_fails_is_rejected_before_anything_is_written(tmp_path: Path, store: str):
    import yaml

    cfg = yaml.safe_load((CONFIGS / "smoke_locomotion_search.yaml").read_text())
    cfg["search"]["genes"]["es.popsize"] = {"low": 4, "high": 8, "integer": True}  # 5 and 7 are odd
    cfg["search"]["checkpoint"] = str(tmp_path / "ckpt")
    path = tmp_path / "odd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = run_cli(["search", str(path), "--tracking-uri", store], tmp_path)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert "search.genes.es.popsize = 5" in lines[0] and "even" in lines[0]
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "ckpt").exists()


def test_help_loads_none_of_torch_ray_or_mlflow(tmp_path: Path):
    # what makes --help and argument errors answer at once, even on a busy machine
    code = (
        "import sys\n"
        "from hybridopt.entry.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "print(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "[]"
    assert "usage: hybridopt" in p.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "smoke.yaml", "--set", "train.lr=fast"],
        ["train", "smoke.yaml", "--set", "plasticity.input.rule=hebb"],
        ["search", "smoke_search.yaml", "--set", "search.population=0"],
        ["search", "smoke_search.yaml", "--set", "search.genes.train.lr={low: 1, high: 0.1}"],
    ],
    ids=["bad-value", "unknown-rule", "bad-search", "bad-gene"],
)
def test_a_bad_set_is_reported_before_torch_ray_or_mlflow_load(argv: list[str], tmp_path: Path):
    # bad input answers within a fraction of a CPU-second: torch alone takes ~2 to import
    argv = [argv[0], str(CONFIGS / argv[1]), *argv[2:], "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    code = (
        "import sys\n"
        "from hybridopt.entry.cli import main\n"
        f"rc = main({argv!r})\n"
        "print(rc, sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.stdout.strip().splitlines()[-1] == "2 []", p.stdout + p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "config error" in p.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "argv",
    [
        ["c.yaml"],
        ["c.yaml", "--set", "a.b=1", "--set", "c=-2", "--seed", "-3", "--resume"],
        ["c.yaml", "--fresh", "--seed", "4"],
    ],
)
def test_the_cluster_entry_point_passes_the_search_arguments_on_unchanged(argv: list[str]):
    # one declaration: what the cluster entry point parses, it hands to `hybridopt search` as it came
    from hybridopt.entry.arguments import search_argv
    from hybridopt.entry.cli import build_parser
    from hybridopt.entry.cluster import build_parser as cluster_parser

    shared = ("config", "overrides", "seed", "resume", "fresh")
    on_cluster = cluster_parser().parse_args(["search", *argv])
    passed = build_parser().parse_args(["search", *search_argv(on_cluster)])
    direct = build_parser().parse_args(["search", *argv])
    assert [getattr(passed, k) for k in shared] == [getattr(on_cluster, k) for k in shared]
    assert [getattr(direct, k) for k in shared] == [getattr(on_cluster, k) for k in shared]
