"""The outer loop: an evotorch genetic algorithm over genomes, candidates trained on Ray.

Generation 0 is the initial population (``population`` random genomes); every later
generation keeps the ``elite`` best and adds ``population - elite`` children (tournament
selection, one-point cross-over, Gaussian mutation, categorical resampling), so with
``elite >= 1`` the best fitness in the population never decreases.  Training is
deterministic (every candidate trains with the search's seed), so elites are not re-trained.

With ``search.inheritance: lamarckian`` (the default) a child does not start from scratch: it
starts from the trained state of the member of the previous population that shares most of
its genes (:func:`~hybridopt.search.inherit.inherit` keeps what still means the same), and
goes on training for its own budget.  Each finished candidate's state is kept as its run's
artifact ``state.pt``, so a resumed search inherits exactly as the uninterrupted one would.
A child run records its lineage: ``hybridopt.inherited_from`` (the run whose state it started
from), ``hybridopt.inherited`` (the groups it kept) and ``budget_cpu_s`` (the CPU seconds of
training behind its state, inherited included); the parent logs ``cpu_s`` (training CPU
spent so far) per generation beside ``best_fitness``, a best-fitness-versus-compute curve.

The driver is the only writer to MLflow: one parent run (``hybridopt.kind=search``) and
one child run per evaluated candidate, logged as each finishes.  After each generation a
checkpoint is written; ``resume=True`` continues the same parent run from it, and picks up
children that finished after the checkpoint without re-running or re-logging them.
"""

from __future__ import annotations

import io
import json
import logging
import math
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import ray
import torch
import yaml

with warnings.catch_warnings():  # evotorch scripts helpers with torch.jit.script, deprecated in torch
    warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated", category=FutureWarning)
    from evotorch import Problem, SolutionBatch
    from evotorch.algorithms import GeneticAlgorithm
    from evotorch.operators import CopyingOperator, GaussianMutation, OnePointCrossOver
from ray.exceptions import RayError

from hybridopt.config import Config, SearchConfig, flatten
from hybridopt.search.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from hybridopt.search.genome import GenomeSpace
from hybridopt.search.inherit import inherit
from hybridopt.search.workers import init_ray, remote_evaluator
from hybridopt.snn.network import PROJECTIONS
from hybridopt.snn.plasticity import RULES
from hybridopt.tracking import Tracker, log_result
from hybridopt.train import TrainResult, TrainState
from hybridopt.train.weights import weights_bytes

# evotorch announces every Problem's dtype and device at INFO level.
logging.getLogger("evotorch").setLevel(logging.WARNING)

__all__ = ["FAILED_FITNESS", "CandidateRecord", "GenomeProblem", "SearchOutcome", "make_algorithm", "run_search"]

# Fitness given to a failed candidate: below any real fitness, but finite for the GA.
FAILED_FITNESS = -1.0e9
STATE_ARTIFACT = "state.pt"  # a candidate's trained state, for children to inherit (also after a resume)


@dataclass
class CandidateRecord:
    generation: int
    index: int
    unit: list[float]
    values: dict[str, Any]
    fitness: float
    status: str
    reason: Optional[str]
    run_id: str
    wall_time: float
    cpu_s: float = 0.0  # this candidate's own training
    budget_cpu_s: float = 0.0  # the training behind its state, inherited included


@dataclass
class SearchOutcome:
    parent_run_id: str
    best_values: dict[str, Any]
    best_fitness: float
    records: list[CandidateRecord] = field(default_factory=list)
    best_history: list[float] = field(default_factory=list)


class GenomeProblem(Problem):
    """Maximise candidate fitness over the unit-encoded genome; evaluation is delegated to
    the driver's Ray dispatcher (``evaluator(values) -> fitness``)."""

    def __init__(self, n_genes: int, seed: int, evaluator: Callable[[torch.Tensor], torch.Tensor]):
        self.evaluator = evaluator
        super().__init__(
            "max", solution_length=n_genes, initial_bounds=(0.0, 1.0), bounds=(0.0, 1.0), seed=seed, dtype=torch.float32
        )

    def _evaluate_batch(self, batch: SolutionBatch) -> None:
        batch.set_evals(self.evaluator(batch.values.clone()))


class CategoricalResample(CopyingOperator):
    """With probability ``p`` per categorical gene, draw its value afresh, uniformly in
    ``[0, 1]`` (i.e. a uniformly random category): Gaussian steps alone rarely cross
    several category cells."""

    def __init__(self, problem: Problem, mask: torch.Tensor, p: float):
        super().__init__(problem)
        self.mask = mask
        self.p = float(p)

    @torch.no_grad()
    def _do(self, batch: SolutionBatch) -> SolutionBatch:
        from copy import deepcopy

        result = deepcopy(batch)
        data = result.access_values()
        hit = (self.problem.make_uniform_shaped_like(data) < self.p) & self.mask.to(data.device)
        data[hit] = self.problem.make_uniform_shaped_like(data)[hit]
        return result


def _rule_counts(space: GenomeSpace, base: Config, population: torch.Tensor) -> dict[str, float]:
    counts = {f"rules/{p}/{r}": 0.0 for p in PROJECTIONS for r in RULES}
    for u in population:
        cfg = space.config_for(base, space.decode(u.tolist()))
        for p in PROJECTIONS:
            counts[f"rules/{p}/{getattr(cfg.plasticity, p).rule}"] += 1
    return {k: v for k, v in counts.items() if v or k.split("/")[1] in _searched_projections(space)}


def _searched_projections(space: GenomeSpace) -> set[str]:
    return {g.path.split(".")[1] for g in space.genes if g.path.startswith("plasticity.") and g.path.endswith(".rule")}


class _Driver:
    def __init__(self, cfg: Config, tracker: Tracker, resume: bool, progress: Optional[Callable[..., None]]):
        assert cfg.search is not None
        self.cfg, self.sc, self.tracker = cfg, cfg.search, tracker
        self.space = GenomeSpace.from_config(cfg.search)
        self.space.validate(cfg)
        self.progress = progress or (lambda **kw: None)
        self.records: list[CandidateRecord] = []
        self.best: Optional[tuple[CandidateRecord, dict[str, Any]]] = None  # (record, state_dict)
        self.best_history: list[float] = []
        self.generation = 0
        self.from_store: dict[tuple[int, int], CandidateRecord] = {}
        self.state: Optional[dict[str, Any]] = None
        self.inherits = cfg.search.inheritance == "lamarckian"
        self.members: list[CandidateRecord] = []  # the current population's records, row by row
        self.trained: dict[str, TrainState] = {}  # run id -> trained state (the members', cached)
        if resume:
            self.state = load_checkpoint(cfg.search.checkpoint, cfg.model_dump(mode="json"))
            self.parent = self.state["parent_run_id"]
            try:
                tracker.client.get_run(self.parent)
            except Exception:  # noqa: BLE001
                raise CheckpointError(f"checkpoint's parent run {self.parent} is not in {tracker.uri}") from None
            self.records = [CandidateRecord(**r) for r in self.state["records"]]
            self.best_history = list(self.state["best_history"])
            if self.state["best"] is not None:
                self.best = (CandidateRecord(**self.state["best"]["record"]), self.state["best"]["state_dict"])
            self._recover_unrecorded()
            self.members = self._population_members(self.state["population"])
        else:
            name = f"{cfg.task.name}__search__{cfg.seed}__{time.strftime('%Y%m%d-%H%M%S')}"
            self.parent = tracker.start_run(name, "search", params=flatten(cfg))
            tracker.log_artifact_bytes(self.parent, "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json")).encode())
        rc = cfg.ray
        self.evaluate = remote_evaluator(rc.num_cpus_per_candidate, rc.num_gpus_per_candidate, rc.max_retries)

    # ------------------------------------------------------------------ resume support
    def _recover_unrecorded(self) -> None:
        """Children logged after the last checkpoint (the search died mid-generation)."""
        done = {(r.generation, r.index) for r in self.records}
        runs = self.tracker.client.search_runs(
            [self.tracker.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{self.parent}'", max_results=50000
        )
        for run in runs:
            t = run.data.tags
            key = (int(t["hybridopt.generation"]), int(t["hybridopt.candidate"]))
            if key in done:
                continue
            if run.info.status not in ("FINISHED", "FAILED"):
                self.tracker.client.delete_run(run.info.run_id)  # half-logged: will be redone
                continue
            fitness = run.data.metrics.get("fitness", FAILED_FITNESS)
            self.from_store[key] = CandidateRecord(
                generation=key[0],
                index=key[1],
                unit=json.loads(t["hybridopt.genome_unit"]),
                values=json.loads(t["hybridopt.genome"]),
                fitness=fitness,
                status=run.info.status,
                reason=t.get("hybridopt.failure"),
                run_id=run.info.run_id,
                wall_time=run.data.metrics.get("wall_time_s", 0.0),
                cpu_s=run.data.metrics.get("cpu_time_s", 0.0),
                budget_cpu_s=run.data.metrics.get("budget_cpu_s", 0.0),
            )

    # ------------------------------------------------------------------ inheritance
    def _population_members(self, population: torch.Tensor) -> list[CandidateRecord]:
        """The record behind each row of a population (the latest with that genome)."""
        by_unit = {tuple(r.unit): r for r in self.records}
        return [m for m in (by_unit.get(tuple(float(x) for x in u)) for u in population) if m is not None]

    def _parent_of(self, u: list[float], values: dict[str, Any]) -> Optional[CandidateRecord]:
        """The finished member of the current population that shares most genes with a child
        (ties: the nearest in the unit genome, then the first)."""
        best, key = None, None
        for m in self.members:
            if m.status != "FINISHED":
                continue
            shared = sum(values[g.path] == m.values[g.path] for g in self.space.genes)
            k = (-shared, sum(abs(a - b) for a, b in zip(u, m.unit)))
            if key is None or k < key:
                best, key = m, k
        return best

    def _trained_state(self, run_id: str) -> Optional[TrainState]:
        """A candidate's trained state: cached, or read back from its run (after a resume)."""
        if run_id not in self.trained:
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    path = self.tracker.client.download_artifacts(run_id, STATE_ARTIFACT, tmp)
                    self.trained[run_id] = TrainState(**torch.load(path, map_location="cpu", weights_only=True))
            except Exception:  # noqa: BLE001 - no state kept (a failed run, an older search): start fresh
                return None
        return self.trained[run_id]

    def _start_of(self, u: list[float], values: dict[str, Any], cand: Config):
        """``(start state, parent run id, kept groups)`` for a new candidate (``None``s: fresh)."""
        if not self.inherits or not self.members:
            return None, None, []
        parent = self._parent_of(u, values)
        state = self._trained_state(parent.run_id) if parent is not None else None
        if parent is None or state is None:
            return None, None, []
        start, kept = inherit(state, self.space.config_for(self.cfg, parent.values), cand)
        return start, parent.run_id, kept

    # ------------------------------------------------------------------ evaluation
    def evaluate_generation(self, population: torch.Tensor) -> torch.Tensor:
        g = self.generation
        n = population.shape[0]
        fitness = torch.full((n,), FAILED_FITNESS)
        pending: dict[Any, tuple[int, list[float], dict[str, Any], Optional[str], list[str]]] = {}
        threads = max(1, int(self.cfg.ray.num_cpus_per_candidate))
        done = 0
        for i, u_t in enumerate(population):
            u = [float(x) for x in u_t]
            values = self.space.decode(u)
            stored = self.from_store.pop((g, i), None)
            if stored is not None and stored.values == values:
                self.records.append(stored)
                fitness[i] = stored.fitness
                done += 1
                continue
            if stored is not None:  # logged for another genome (config changed between runs): redo it
                self.tracker.client.delete_run(stored.run_id)
            cand = self.space.config_for(self.cfg, values)
            cand = cand.model_copy(update={"train": cand.train.model_copy(update={"threads": threads})})
            start, parent, kept = self._start_of(u, values, cand)
            pending[self.evaluate.remote(cand.model_dump(mode="json"), start)] = (i, u, values, parent, kept)
        self.progress(generation=g, done=done, total=n, best=self._best_fitness())
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                i, u, values, parent, kept = pending.pop(ref)
                try:
                    result: TrainResult = ray.get(ref)
                except RayError as e:
                    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    result = TrainResult.failure(f"worker failed after {self.cfg.ray.max_retries} retries: {first}")
                rec = self._log_candidate(g, i, u, values, result, parent, kept)
                fitness[i] = rec.fitness
                done += 1
                self.progress(generation=g, done=done, total=n, best=self._best_fitness())
        return fitness

    def _log_candidate(
        self,
        g: int,
        i: int,
        u: list[float],
        values: dict[str, Any],
        result: TrainResult,
        parent: Optional[str] = None,
        kept: Optional[list[str]] = None,
    ):
        cand_cfg = self.space.config_for(self.cfg, values)
        tags = {
            "hybridopt.generation": str(g),
            "hybridopt.candidate": str(i),
            "hybridopt.genome": json.dumps(values),
            "hybridopt.genome_unit": json.dumps(u),
        }
        if parent is not None:  # lineage: whose trained state it started from, and what it kept
            tags["hybridopt.inherited_from"] = parent
            tags["hybridopt.inherited"] = ",".join(kept or [])
        run_id = self.tracker.start_run(
            f"g{g:03d}-c{i:03d} {GenomeSpace.describe(values)}"[:250],
            "candidate",
            params=flatten(cand_cfg),
            tags=tags,
            parent_run_id=self.parent,
        )
        budget = result.state.cpu_s if result.state is not None else result.cpu_time
        if not result.failed:
            result.final_metrics["budget_cpu_s"] = budget
        if self.inherits and result.state is not None and not result.failed:
            self.trained[run_id] = result.state
            buf = io.BytesIO()
            torch.save(asdict(result.state), buf)
            self.tracker.log_artifact_bytes(run_id, STATE_ARTIFACT, buf.getvalue())
        log_result(self.tracker, run_id, result, cand_cfg, artifacts=False)
        fit = result.fitness if math.isfinite(result.fitness) else FAILED_FITNESS
        rec = CandidateRecord(
            g, i, u, values, fit, result.status, result.reason, run_id, result.wall_time, result.cpu_time, budget
        )
        self.records.append(rec)
        if not result.failed and (self.best is None or fit > self.best[0].fitness):
            self.best = (rec, result.state_dict)
        return rec

    def _best_fitness(self) -> float:
        return self.best[0].fitness if self.best else float("nan")

    # ------------------------------------------------------------------ generation bookkeeping
    def end_generation(self, ga: GeneticAlgorithm, problem: GenomeProblem) -> None:
        g = self.generation
        pop = ga.population
        evals = pop.evals[:, 0].clone()
        this_gen = [r.fitness for r in self.records if r.generation == g and r.status == "FINISHED"]
        best = float(evals.max())
        self.best_history.append(best)
        metrics = {
            "best_fitness": best,
            "mean_fitness": sum(this_gen) / len(this_gen) if this_gen else float("nan"),
            "failed": float(sum(r.status != "FINISHED" for r in self.records if r.generation == g)),
            "cpu_s": float(sum(r.cpu_s for r in self.records)),  # training CPU spent so far, all candidates
            "candidates": float(len(self.records)),  # evaluated so far, every generation
            "candidates_in_generation": float(sum(r.generation == g for r in self.records)),
            **_rule_counts(self.space, self.cfg, pop.values),
        }
        self.tracker.log_metrics(self.parent, {k: v for k, v in metrics.items() if math.isfinite(v)}, step=g)
        self.members = self._population_members(pop.values)
        alive = {m.run_id for m in self.members}
        self.trained = {k: v for k, v in self.trained.items() if k in alive}  # only members can be parents
        best_state = None
        if self.best is not None:
            best_state = {"record": asdict(self.best[0]), "state_dict": self.best[1]}
        save_checkpoint(
            self.sc.checkpoint,
            {
                "config": self.cfg.model_dump(mode="json"),
                "generation": g,
                "population": pop.values.clone(),
                "evals": evals,
                "generator": problem.generator.get_state(),
                "parent_run_id": self.parent,
                "records": [asdict(r) for r in self.records],
                "best": best_state,
                "best_history": self.best_history,
            },
        )

    def finish(self) -> SearchOutcome:
        if self.best is None:
            self.tracker.end_run(self.parent, "FAILED", "every candidate failed")
            return SearchOutcome(self.parent, {}, FAILED_FITNESS, self.records, self.best_history)
        rec, state_dict = self.best
        best_cfg = self.space.config_for(self.cfg, rec.values)
        self.tracker.log_artifact_bytes(self.parent, "best_genome.yaml", yaml.safe_dump(rec.values).encode())
        self.tracker.log_artifact_bytes(
            self.parent, "best_config.yaml", yaml.safe_dump(best_cfg.model_dump(mode="json")).encode()
        )
        self.tracker.log_artifact_bytes(self.parent, "weights.pt", weights_bytes(best_cfg, state_dict))
        self.tracker.set_tags(
            self.parent, {"hybridopt.best_genome": GenomeSpace.describe(rec.values), "hybridopt.best_run": rec.run_id}
        )
        self.tracker.log_metrics(self.parent, {"fitness": rec.fitness}, step=self.generation)
        self.tracker.end_run(self.parent, "FINISHED")
        return SearchOutcome(self.parent, rec.values, rec.fitness, self.records, self.best_history)


def make_algorithm(problem: GenomeProblem, sc: SearchConfig, space: GenomeSpace) -> GeneticAlgorithm:
    """The evotorch GA of a search: ``elite`` survivors plus ``population - elite`` children."""
    return GeneticAlgorithm(
        problem,
        popsize=sc.population,
        elitist=False,  # elitism by count: the best ``elite`` parents survive, children fill the rest
        re_evaluate=False,  # fitness is a deterministic function of the genome
        operators=[
            OnePointCrossOver(problem, tournament_size=sc.tournament, num_children=sc.population - sc.elite),
            GaussianMutation(problem, stdev=sc.mutation_stdev, mutation_probability=sc.mutation_prob),
            CategoricalResample(problem, space.categorical_mask, sc.categorical_resample),
        ],
    )


def run_search(
    cfg: Config,
    tracker: Tracker,
    *,
    resume: bool = False,
    address: Optional[str] = None,
    progress: Optional[Callable[..., None]] = None,
) -> SearchOutcome:
    """Run (or resume) the search a config describes; returns the best genome and fitness.

    ``progress(generation=, done=, total=, best=)`` is called as candidates finish.
    Ctrl-C ends the parent run as KILLED; the last generation checkpoint stays usable.
    """
    if cfg.search is None:
        raise ValueError("config has no search section")
    init_ray(address or cfg.ray.address, cfg.ray.num_cpus)
    driver = _Driver(cfg, tracker, resume, progress)
    sc = cfg.search
    try:
        problem = GenomeProblem(len(driver.space), cfg.seed, driver.evaluate_generation)
        ga = make_algorithm(problem, sc, driver.space)
        if driver.state is None:
            problem.evaluate(ga.population)  # generation 0
            driver.end_generation(ga, problem)
        else:
            st = driver.state
            ga.population.set_values(st["population"])
            ga.population.set_evals(st["evals"])
            problem.generator.set_state(st["generator"])
            driver.generation = st["generation"]
        # The initial population is evaluated above, so the GA must not evaluate it again.
        ga._first_iter = False
        while driver.generation + 1 < sc.generations:
            driver.generation += 1
            ga.step()
            driver.end_generation(ga, problem)
    except KeyboardInterrupt:
        tracker.end_run(driver.parent, "KILLED", "interrupted")
        raise
    except BaseException as e:
        tracker.end_run(driver.parent, "FAILED", f"{type(e).__name__}: {e}")
        raise
    return driver.finish()
