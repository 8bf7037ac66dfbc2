"""A search's driver: it trains a generation's candidates through the rungs, keeps their lineage
and records, writes the checkpoint and the parent run's metrics, and ends the search
(:func:`hybridopt.search.evolution.run_search` runs the GA around it)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from typing import Any, Optional

import torch
import yaml

from hybridopt.config import Config
from hybridopt.evo import GeneticAlgorithm
from hybridopt.results.report import log_figures_safely
from hybridopt.search.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from hybridopt.search.dispatch import Pool, slots_for
from hybridopt.search.ga import FAILED_FITNESS, GenomeProblem
from hybridopt.search.genome import GenomeSpace
from hybridopt.search.halving import Job, budget_fraction, decide, quotas, scaled_budget
from hybridopt.search.inherit import Lineage, inherit
from hybridopt.search.outcome import CandidateRecord, FinishedCandidate, SearchOutcome, describe_search
from hybridopt.search.record import ChildRun, SearchRecord
from hybridopt.tracking import Tracker, describe, run_params
from hybridopt.train import ProgressEvent, ProgressFn
from hybridopt.train.weights import weights_bytes

__all__ = ["Driver"]


class Driver:
    def __init__(
        self,
        cfg: Config,
        tracker: Tracker,
        resume: bool,
        progress: Optional[ProgressFn],
        command: Optional[str] = None,
    ):
        assert cfg.search is not None
        self.cfg, self.sc, self.tracker = cfg, cfg.search, tracker
        self.space = GenomeSpace.from_config(cfg.search)
        self.space.validate(cfg)
        self.progress: ProgressFn = progress or (lambda event: None)
        self.records: list[CandidateRecord] = []
        self.best: Optional[tuple[CandidateRecord, dict[str, Any]]] = None  # (record, state_dict)
        self.best_history: list[float] = []
        self.generation = 0
        self.from_store: dict[tuple[int, int], ChildRun] = {}
        self.state: Optional[dict[str, Any]] = None
        self.inherits = cfg.search.inheritance == "lamarckian"
        self.ga: Optional[GeneticAlgorithm] = None
        self.open_runs: set[str] = set()  # child runs of candidates under way
        if resume:
            self.state = load_checkpoint(cfg.search.checkpoint, cfg.model_dump(mode="json"))
            self.parent = self.state["parent_run_id"]
            try:
                tracker.client.get_run(self.parent)
            except Exception:  # noqa: BLE001
                raise CheckpointError(f"checkpoint's parent run {self.parent} is not in {tracker.uri}") from None
            self.record = SearchRecord(tracker, self.parent)
            self.lineage = Lineage(self.space.genes, self.record.trained_state)
            tracker.client.update_run(self.parent, status="RUNNING")  # under way again
            self.records = [CandidateRecord(**r) for r in self.state["records"]]
            self.best_history = list(self.state["best_history"])
            if self.state["best"] is not None:
                self.best = (CandidateRecord(**self.state["best"]["record"]), self.state["best"]["state_dict"])
            done = {(r.generation, r.index) for r in self.records}
            for child in self.record.stored_children():  # finished after the checkpoint: not run again
                if (child.generation, child.index) not in done:
                    self.from_store[(child.generation, child.index)] = child
            if self.state["generation"] >= 0:
                self.lineage.set_population(self.records, self.state["population"])
        else:
            name = f"{cfg.task.name}__search__{cfg.seed}__{time.strftime('%Y%m%d-%H%M%S')}"
            tags = {"hybridopt.command": command} if command else {}
            self.parent = tracker.start_run(name, "search", params=run_params(cfg, search=True), tags=tags)
            describe(tracker, self.parent, describe_search(cfg, self.space, command))
            self.record = SearchRecord(tracker, self.parent)
            self.lineage = Lineage(self.space.genes, self.record.trained_state)
            tracker.log_artifact_bytes(self.parent, "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json")).encode())
        rc = cfg.ray
        slots = slots_for(rc.num_cpus_per_candidate, rc.num_gpus_per_candidate)
        self.pool = Pool(
            min(slots, self.sc.max_concurrent or slots),
            rc.num_cpus_per_candidate,
            rc.num_gpus_per_candidate,
            rc.max_retries,
        )
        self.threads = max(1, int(rc.num_cpus_per_candidate))
        self.command = command
        if resume and command is None:  # the command that started it, kept on its parent run
            self.command = tracker.client.get_run(self.parent).data.tags.get("hybridopt.command")

    # ------------------------------------------------------------------ inheritance
    def _candidate_config(self, values: dict[str, Any]) -> Config:
        cand = self.space.config_for(self.cfg, values)
        return cand.model_copy(update={"train": cand.train.model_copy(update={"threads": self.threads})})

    def _new_job(self, index: int, u: list[float], values: dict[str, Any]) -> Job:
        job = Job(index, u, values, self._candidate_config(values))
        if self.inherits and self.lineage.members:
            parent = self.lineage.parent_of(u, values)
            state = self.lineage.state(parent.run_id) if parent is not None else None
            if parent is not None and state is not None:
                start, kept = inherit(state, self._candidate_config(parent.values), job.cfg)
                job.start, job.parent, job.kept = start, parent.run_id, tuple(kept)
        return job

    def _elite_jobs(self, first_index: int) -> list[Job]:
        """With inheritance, the population's ``elite`` best (they survive this generation) train on."""
        if not self.inherits or self.ga is None or not self.sc.elite:
            return []
        evals = self.ga.population.evals[:, 0]
        rows = sorted(range(len(evals)), key=lambda r: (-float(evals[r]), r))[: self.sc.elite]
        by_row = dict(self.lineage.members)
        jobs = []
        for row in rows:
            m = by_row.get(row)
            state = self.lineage.state(m.run_id) if m is not None and m.status == "FINISHED" else None
            if state is None:
                continue
            job = Job(first_index + len(jobs), list(m.unit), dict(m.values), self._candidate_config(m.values))
            start, kept = inherit(state, job.cfg, job.cfg)  # its own state: everything, optimiser included
            job.start, job.parent, job.kept, job.row = start, m.run_id, tuple(kept), row
            jobs.append(job)
        return jobs

    # ------------------------------------------------------------------ evaluation
    def evaluate_generation(self, population: torch.Tensor) -> torch.Tensor:
        """Train a generation's new candidates (and, with inheritance, its elites) through the rungs;
        returns the new candidates' fitness and writes the elites' back into the population."""
        g = self.generation
        units = [[float(x) for x in u] for u in population]
        jobs = [self._new_job(i, u, self.space.decode(u)) for i, u in enumerate(units)]
        jobs += self._elite_jobs(len(jobs))
        for job in jobs:
            stored = self.from_store.pop((g, job.index), None)
            if stored is not None and stored.values == job.values:
                job.stored = stored
            elif stored is not None:  # logged for another genome (config changed between runs): redo it
                self.record.delete(stored.run_id)
        self._run(jobs)
        fitness = torch.full((len(population),), FAILED_FITNESS)
        for job in jobs:
            rec = self._finish_record(g, job)
            if job.row is None:
                fitness[job.index] = rec.fitness
            elif self.ga is not None:
                self.ga.population.access_evals()[job.row, 0] = rec.fitness
        self._report(jobs)  # the generation's best, once every candidate is recorded
        return fitness

    def _run(self, jobs: list[Job]) -> None:
        """Successive halving over ``jobs``, each promotion made as soon as it is certain."""
        rungs = self.sc.rungs
        quota = quotas(len(jobs), rungs, self.sc.keep)
        for job in jobs:  # finished before a resume: their rungs are known
            if job.stored is not None:
                st = job.stored
                job.fitness = list(st.rung_fitness) + ([-math.inf] if st.status == "FAILED" else [])
                job.fitness = job.fitness[: st.rung + 1] or [-math.inf]
                job.decided = job.done = True
        self._report(jobs)
        for job in jobs:
            if not job.done:
                self._submit(job, 0)
        while True:
            decide(jobs, quota, self._submit, self._close)
            if not self.pool.pending:
                break
            key, result = self.pool.next_result()
            job = jobs[key]
            job.result, job.decided = result, False  # a rung completed: its next step is to be decided
            job.cpu_s += result.cpu_time
            job.wall_s += result.wall_time
            job.fitness.append(result.fitness if not result.failed else -math.inf)
            self.record.log_rung(job.run_id, job.rung, result)
            if result.failed or job.rung == len(rungs) - 1:
                self._close(job)
            self._report(jobs)

    def _report(self, jobs: list[Job]) -> None:
        done = sum(j.done for j in jobs)
        g, gens = self.generation, self.sc.generations
        stage = f"generation {g + 1}/{gens}" if g < gens else "final training"
        self.progress(ProgressEvent(done, len(jobs), {"best": self._best_fitness()}, stage))

    def _submit(self, job: Job, rung: int) -> None:
        if job.run_id is None:  # dispatched: its run exists from now on, RUNNING
            desc = GenomeSpace.describe(job.values)
            job.run_id = self.record.open_child(
                f"g{self.generation:03d}-c{job.index:03d} {desc}",
                self.generation,
                job.index,
                job.unit,
                job.values,
                run_params(job.cfg),
                job.parent,
                job.kept,
            )
            self.open_runs.add(job.run_id)
        lo = self.sc.rungs[rung - 1] if rung > 0 else 0.0
        cfg, cpu = budget_fraction(job.cfg, lo, self.sc.rungs[rung])
        start = job.start if rung == 0 else job.result.state
        self.pool.submit(job.index, cfg.model_dump(mode="json"), start, None if math.isinf(cpu) else cpu)

    def _close(self, job: Job) -> None:
        """The job stops at its last rung: its child run ends, its state is kept for children."""
        job.decided = job.done = True
        result = job.result
        assert result is not None and job.run_id is not None
        keep_state = self.inherits and not result.failed
        self.record.close_child(job.run_id, result, job.cpu_s, job.wall_s, keep_state)
        self.open_runs.discard(job.run_id)
        done = FinishedCandidate(
            generation=self.generation,
            index=job.index,
            genome=GenomeSpace.describe(job.values),
            fitness=None if result.failed else result.fitness,
            status=result.status,
            reason=result.reason,
            rung=job.rung,
            cpu_s=job.cpu_s,
            wall_s=job.wall_s,
        )
        self.progress(ProgressEvent(line=done.line()))
        if keep_state and result.state is not None:
            self.lineage.trained[job.run_id] = result.state

    def _finish_record(self, g: int, job: Job) -> CandidateRecord:
        if job.stored is not None:
            st = job.stored
            fit = st.metrics.get("fitness", FAILED_FITNESS) if st.status == "FINISHED" else FAILED_FITNESS
            rec = CandidateRecord(
                g, job.index, job.unit, job.values, fit, st.status, st.reason, st.run_id,
                st.metrics.get("wall_time_s", 0.0), st.metrics.get("cpu_time_s", 0.0),
                st.metrics.get("budget_cpu_s", 0.0), st.rung,
            )  # fmt: skip
            state_dict = None
        else:
            result = job.result
            assert result is not None and job.run_id is not None
            fit = result.fitness if not result.failed and math.isfinite(result.fitness) else FAILED_FITNESS
            budget = result.state.cpu_s if result.state is not None else job.cpu_s
            rec = CandidateRecord(
                g, job.index, job.unit, job.values, fit, result.status, result.reason, job.run_id,
                job.wall_s, job.cpu_s, budget, job.rung,
            )  # fmt: skip
            state_dict = result.state_dict
        self.records.append(rec)
        if rec.status == "FINISHED" and (self.best is None or rec.fitness > self.best[0].fitness):
            if state_dict is None:  # finished before the resume: its weights are in its state
                state = self.record.trained_state(rec.run_id)
                state_dict = state.model if state is not None else None
            if state_dict is not None:
                self.best = (rec, state_dict)
        return rec

    def final_training(self) -> None:
        """``search.final_budget``: the best candidate so far trains on from its own state, as a child
        run of generation ``generations`` (after the last); its measurement joins the records."""
        if self.sc.final_budget <= 0 or self.best is None:
            return
        g = self.generation = self.sc.generations
        best = self.best[0]
        state = self.lineage.state(best.run_id)
        if state is None:
            return
        cfg = scaled_budget(self._candidate_config(best.values), self.sc.final_budget)
        job = Job(0, list(best.unit), dict(best.values), cfg)
        start, kept = inherit(state, cfg, cfg)  # its own state: everything, optimiser included
        job.start, job.parent, job.kept = start, best.run_id, tuple(kept)
        stored = self.from_store.pop((g, 0), None)
        if stored is not None and stored.values == job.values:
            job.stored = stored
        elif stored is not None:
            self.record.delete(stored.run_id)
        self._run([job])
        rec = self._finish_record(g, job)
        self._report([job])
        metrics = {
            "best_fitness": self._best_fitness(),
            "cpu_s": float(sum(r.cpu_s for r in self.records)),
            "candidates": float(len(self.records)),
        }
        if rec.status == "FINISHED":
            metrics["final_fitness"] = rec.fitness
        self.record.log_generation(g, {k: v for k, v in metrics.items() if math.isfinite(v)})

    def _best_fitness(self) -> float:
        return self.best[0].fitness if self.best else float("nan")

    # ------------------------------------------------------------------ generation bookkeeping
    def checkpoint(self, generation: int, population: torch.Tensor, evals: Optional[torch.Tensor], generator) -> None:
        best_state = None
        if self.best is not None:
            best_state = {"record": asdict(self.best[0]), "state_dict": self.best[1]}
        save_checkpoint(
            self.sc.checkpoint,
            {
                "config": self.cfg.model_dump(mode="json"),
                "generation": generation,
                "population": population.clone(),
                "evals": evals,
                "generator": generator.get_state(),
                "parent_run_id": self.parent,
                "records": [asdict(r) for r in self.records],
                "best": best_state,
                "best_history": self.best_history,
            },
        )

    def end_generation(self, ga: GeneticAlgorithm, problem: GenomeProblem) -> None:
        g = self.generation
        pop = ga.population
        evals = pop.evals[:, 0].clone()
        this_gen = [r.fitness for r in self.records if r.generation == g and r.status == "FINISHED"]
        best = float(evals.max())
        if self.best_history:  # an elite that trained on may measure lower: the best so far stays
            best = max(best, self.best_history[-1])
        self.best_history.append(best)
        metrics = {
            "best_fitness": best,
            "mean_fitness": sum(this_gen) / len(this_gen) if this_gen else float("nan"),
            "failed": float(sum(r.status != "FINISHED" for r in self.records if r.generation == g)),
            "cpu_s": float(sum(r.cpu_s for r in self.records)),  # training CPU spent so far, all candidates
            "candidates": float(len(self.records)),  # evaluated so far, every generation
            "candidates_in_generation": float(sum(r.generation == g for r in self.records)),
        }
        self.record.log_generation(g, {k: v for k, v in metrics.items() if math.isfinite(v)})
        self.lineage.set_population(self.records, pop.values)  # only members can be parents
        self.checkpoint(g, pop.values, evals, problem.generator)

    def abandon(self, status: str, reason: str) -> None:
        """The search stops early: the candidates under way end with it (a resume runs them again)."""
        self.pool.close()
        for run_id in sorted(self.open_runs):
            self.tracker.end_run(run_id, status, reason)
        self.open_runs.clear()
        self.tracker.end_run(self.parent, status, reason)

    def finish(self) -> SearchOutcome:
        self.pool.close()
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
        describe(self.tracker, self.parent, describe_search(self.cfg, self.space, self.command, rec))
        self.tracker.end_run(self.parent, "FINISHED")
        log_figures_safely(self.tracker, self.parent)
        return SearchOutcome(self.parent, rec.values, rec.fitness, self.records, self.best_history)
