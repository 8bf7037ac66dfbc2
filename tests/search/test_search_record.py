"""What a search stores: the parent run, a child run per candidate with its rungs and lineage, and
what a candidate trains (with and without inheritance, a family from a plugin module)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.search.searching import (
    EXPECTED_CHILDREN,
    RUNG_STEPS,
    SMOKE,
    runs_of,
    search,
    search_env,
)

pytestmark = pytest.mark.slow


def test_search_logs_parent_and_children(reference):
    _, store = reference
    client, parents, children = runs_of(store)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert len(children) == EXPECTED_CHILDREN
    for c in children:
        assert c.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert {"hybridopt.generation", "hybridopt.candidate"} <= set(c.data.tags)
        for proj in ("input", "recurrent", "readout"):  # a static projection's coefficients do not apply
            plastic = c.data.params[f"plasticity.{proj}.rule"] != "none"
            assert (f"plasticity.{proj}.modulation" in c.data.params) == plastic
        assert not any(k.split(".")[0] in ("es", "search", "ray", "tracking") for k in c.data.params)
        assert "fitness" in c.data.metrics and c.info.status == "FINISHED"
        rung = int(c.data.tags["hybridopt.rung"])
        assert len(client.get_metric_history(c.info.run_id, "train/loss")) == RUNG_STEPS[rung]
        rung_fitness = client.get_metric_history(c.info.run_id, "rung_fitness")
        assert sorted(m.step for m in rung_fitness) == list(range(rung + 1))
        assert max(rung_fitness, key=lambda m: m.step).value == c.data.metrics["fitness"]
        assert c.info.end_time - c.info.start_time >= 1000 * c.data.metrics["wall_time_s"] * 0.5  # created at dispatch
    # successive halving, every generation: 4 candidates, the best 2 to rung 1, the best of those to rung 2
    for g in range(3):
        rungs = sorted(
            int(c.data.tags["hybridopt.rung"]) for c in children if c.data.tags["hybridopt.generation"] == str(g)
        )
        assert rungs == [0, 0, 1, 2], (g, rungs)
        # promoted: the rung's best (ties to the lower candidate number)
        gen = [c for c in children if c.data.tags["hybridopt.generation"] == str(g)]
        first = {c.info.run_id: client.get_metric_history(c.info.run_id, "rung_fitness") for c in gen}
        r0 = sorted(
            gen,
            key=lambda c: (
                -min(first[c.info.run_id], key=lambda m: m.step).value,
                int(c.data.tags["hybridopt.candidate"]),
            ),
        )
        assert sorted(int(c.data.tags["hybridopt.rung"]) for c in r0[:2]) == [1, 2]
    best = [
        m.value for m in sorted(client.get_metric_history(parent.info.run_id, "best_fitness"), key=lambda m: m.step)
    ]
    assert len(best) == 3 and all(a <= b for a, b in zip(best, best[1:]))
    assert best[-1] == max(c.data.metrics["fitness"] for c in children)
    assert "mean_fitness" in parent.data.metrics
    assert parent.data.metrics["candidates"] == len(children)  # every generation's, not the last one's
    # the search's result: the winner re-measured on reserved test episodes, beside chance and the
    # observer reading the same inputs (every child carries its own)
    winner = next(c for c in children if c.info.run_id == parent.data.tags["hybridopt.best_run"])
    for key in ("test/accuracy", "test/accuracy_se", "test/episodes", "test/chance", "test/observer"):
        assert parent.data.metrics[key] == winner.data.metrics[key], key
    assert all("test/accuracy" in c.data.metrics for c in children)
    assert parent.data.metrics["test/observer"] > 0.9 and parent.data.metrics["test/chance"] == 0.5
    # lineage: generation 0 trains from scratch; later children start from a finished earlier candidate's
    # trained state, their curves going on from its step, their budget counting its CPU seconds
    by_id = {c.info.run_id: c for c in children}
    for c in children:
        gen, tags, m = int(c.data.tags["hybridopt.generation"]), c.data.tags, c.data.metrics
        losses = client.get_metric_history(c.info.run_id, "train/loss")
        n = RUNG_STEPS[int(tags["hybridopt.rung"])]
        if gen == 0:
            assert "hybridopt.inherited_from" not in tags
            assert m["budget_cpu_s"] == pytest.approx(m["cpu_time_s"])
            assert sorted(x.step for x in losses) == list(range(1, n + 1))
            continue
        src = by_id[tags["hybridopt.inherited_from"]]
        assert int(src.data.tags["hybridopt.generation"]) == gen - 1 and src.info.status == "FINISHED"
        assert tags["hybridopt.inherited"].split(",")[0] == "weights"
        assert m["budget_cpu_s"] == pytest.approx(src.data.metrics["budget_cpu_s"] + m["cpu_time_s"])
        first = int(src.data.metrics["train_steps"]) + 1
        assert sorted(x.step for x in losses) == list(range(first, first + n))
    # the elites trained on: two candidates of each later generation carry on a previous member's genome
    for g in (1, 2):
        gen = [c for c in children if c.data.tags["hybridopt.generation"] == str(g)]
        same = [
            c
            for c in gen
            if by_id[c.data.tags["hybridopt.inherited_from"]].data.tags["hybridopt.genome"]
            == c.data.tags["hybridopt.genome"]
        ]
        assert len(same) >= 2
    cpu = [x.value for x in sorted(client.get_metric_history(parent.info.run_id, "cpu_s"), key=lambda x: x.step)]
    assert len(cpu) == 3 and cpu[-1] == pytest.approx(sum(c.data.metrics["cpu_time_s"] for c in children))
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"weights.pt", "best_genome.yaml", "config.yaml"} <= arts


def test_without_inheritance_every_candidate_trains_from_scratch(tmp_path: Path, store: str, ray_tmp: str):
    p = search([SMOKE, "--tracking-uri", store, "--set", "search.inheritance=none"], tmp_path, ray_tmp)
    assert p.returncode == 0, p.stderr
    client, parents, children = runs_of(store)
    assert len(parents) == 1 and {int(c.data.tags["hybridopt.generation"]) for c in children} == {0, 1}
    for c in children:
        assert "hybridopt.inherited_from" not in c.data.tags
        assert c.data.metrics["budget_cpu_s"] == pytest.approx(c.data.metrics["cpu_time_s"])
        assert min(x.step for x in client.get_metric_history(c.info.run_id, "train/loss")) == 1
        assert not client.list_artifacts(c.info.run_id)  # no trained state is kept for children


def test_a_family_registered_by_a_plugin_module_trains_in_a_search(tmp_path: Path, store: str, ray_tmp: str):
    # the tests' own family, loaded the way a user loads theirs: the driver and every worker import it
    import yaml

    cfg = yaml.safe_load(Path(SMOKE).read_text())
    cfg["search"]["genes"]["plasticity.input.rule"] = {"choices": ["anti_hebbian", "hebbian"]}
    (tmp_path / "own.yaml").write_text(yaml.safe_dump(cfg))
    args = [str(tmp_path / "own.yaml"), "--tracking-uri", store, "--set", "search.generations=1",
            "--set", f"search.checkpoint={tmp_path}/c"]  # fmt: skip
    p = search(args, tmp_path, ray_tmp)
    assert p.returncode == 2 and "unknown rule 'anti_hebbian'" in p.stderr  # not registered without the plugin
    env = {**search_env(ray_tmp), "HYBRIDOPT_PLUGINS": "tests.extra_family"}
    p = subprocess.run([sys.executable, "-m", "hybridopt", "search", *args], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr
    client, _, children = runs_of(store)
    assert children and all(c.info.status == "FINISHED" for c in children)
    anti = [c for c in children if c.data.params["plasticity.input.rule"] == "anti_hebbian"]
    assert anti, "no candidate drew the registered family"
    for c in anti:  # it trained: its own coefficient is in the state it kept
        path = client.download_artifacts(c.info.run_id, "state.pt", str(tmp_path / c.info.run_id))
        import torch

        model = torch.load(path, weights_only=True)["model"]
        assert "projections.input.coeffs.k" in model and torch.isfinite(model["projections.input.coeffs.k"])


def test_a_lamarckian_winner_s_genome_carries_its_lineage_s_initial_values(tmp_path: Path, store: str, ray_tmp: str):
    # the input projection is plastic in every candidate (its family and mode fixed), its alpha_init
    # a gene: from generation 1 on, every child inherits the input's alpha, so its alpha_init is
    # its parent's, back to the lineage's root
    import json

    import yaml

    cfg = yaml.safe_load(Path(SMOKE).read_text())
    genes = cfg["search"]["genes"]
    del genes["plasticity.input.rule"], genes["plasticity.input.modulation"], genes["network.hidden"]
    genes["plasticity.input.alpha_init"] = {"low": 0.01, "high": 1.0, "log": True}
    cfg["plasticity"] = {"input": {"rule": "hebbian", "modulation": "neuromodulated"}}
    (tmp_path / "own.yaml").write_text(yaml.safe_dump(cfg))
    args = [str(tmp_path / "own.yaml"), "--tracking-uri", store, "--set", f"search.checkpoint={tmp_path}/c"]
    p = search(args, tmp_path, ray_tmp)
    assert p.returncode == 0, p.stderr
    client, (parent,), children = runs_of(store)
    by_id = {c.info.run_id: c for c in children}
    alpha = "plasticity.input.alpha_init"

    def genome(run) -> dict:
        return json.loads(run.data.tags["hybridopt.genome"])

    later = [c for c in children if int(c.data.tags["hybridopt.generation"]) >= 1]
    assert any("hybridopt.lineage_genes" in c.data.tags for c in later)
    for c in later:
        src = by_id[c.data.tags["hybridopt.inherited_from"]]
        assert "input.plasticity" in c.data.tags["hybridopt.inherited"].split(",")
        assert genome(c)[alpha] == genome(src)[alpha]
        if genome(c) != genome(src):  # a new child, not an elite training on from its own state
            assert c.data.tags["hybridopt.lineage_genes"] == alpha
        assert float(c.data.params[alpha]) == pytest.approx(genome(src)[alpha])  # its config too
    for c in children:
        if int(c.data.tags["hybridopt.generation"]) == 0:
            assert "hybridopt.lineage_genes" not in c.data.tags
    # the winner's recorded genome: the alpha_init its lineage's root trained from
    winner = by_id[client.get_run(parent.info.run_id).data.tags["hybridopt.best_run"]]
    root = winner
    while "hybridopt.inherited_from" in root.data.tags:
        root = by_id[root.data.tags["hybridopt.inherited_from"]]
    path = client.download_artifacts(parent.info.run_id, "best_genome.yaml", str(tmp_path))
    assert yaml.safe_load(Path(path).read_text())[alpha] == genome(root)[alpha]
