"""A search's loop: it asks the rooms in turn and holds nothing they own.

Each room does one thing: :mod:`~hybridopt.search.evolution` the GA and its population's
fitness, :mod:`~hybridopt.search.halving` a generation's training through the rungs,
:mod:`~hybridopt.search.dispatch` the Ray workers (the only module that imports Ray),
:mod:`~hybridopt.search.record` the MLflow record (the parent run's life and one child run per
candidate), :mod:`~hybridopt.search.inherit` who a candidate starts from,
:mod:`~hybridopt.search.outcome` the standings, and :mod:`~hybridopt.search.checkpoint` where to
resume from.  Inner loops never see Ray or MLflow.

Training is not thrown away.  With ``search.inheritance: lamarckian`` (the default) a child
starts from the trained state of the previous population's member that shares most of its
genes, and the ``elite`` survivors train on from their own state, measured again.

Resume from any moment: a checkpoint is written before generation 0 and after each generation;
``resume=True`` continues the same parent run from it, takes every child the store holds as
finished (its rungs, fitness and trained state) without re-running or re-logging it, deletes the
runs a killed driver left RUNNING and runs those candidates again.  Ctrl-C ends the parent and
the candidates under way as KILLED.  With ``search.final_budget`` the best candidate then trains
on from its own state (a resume of a finished search runs only that).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch

from hybridopt.config import Config
from hybridopt.search.checkpoint import FAILED_FITNESS, SearchCheckpoint
from hybridopt.search.dispatch import Pool, init_ray, slots_for, stop_on_signals
from hybridopt.search.evolution import Evolution
from hybridopt.search.genome import GenomeSpace
from hybridopt.search.halving import Job, RungPool, SuccessiveHalving, scaled_budget
from hybridopt.search.inherit import Lineage
from hybridopt.search.outcome import SearchOutcome, Standings, describe_search
from hybridopt.search.record import SearchRecord
from hybridopt.search.rung_record import RungRecorder
from hybridopt.stored_names import CandidateRecord
from hybridopt.tracking import Tracker
from hybridopt.train import ProgressFn

__all__ = ["Driver", "run_search"]


class Driver:
    """One search, from its config: generations of the GA, each trained through the rungs.

    ``pool`` trains the candidates: by default the Ray actor pool the config's ``ray`` section
    sizes (Ray must be up); another :class:`~hybridopt.search.halving.RungPool` with a
    ``close()`` (a benchmark's simulated workers) drives the same search without Ray."""

    def __init__(
        self,
        cfg: Config,
        tracker: Tracker,
        resume: bool,
        progress: Optional[ProgressFn] = None,
        command: Optional[str] = None,
        pool: Optional[RungPool] = None,
    ):
        assert cfg.search is not None
        self.cfg, self.sc = cfg, cfg.search
        self.space = GenomeSpace.from_config(cfg.search)
        self.space.validate(cfg)
        self.evolution = Evolution(self.space, self.sc, cfg.seed, self.measure_generation)
        self.halving = SuccessiveHalving(tuple(self.sc.rungs), self.sc.keep)
        self.checkpoint = SearchCheckpoint.load(self.sc.checkpoint, cfg.model_dump(mode="json")) if resume else None
        if self.checkpoint is None:
            self.record = SearchRecord.start(tracker, cfg, describe_search(cfg, self.space, command), command)
            self.standings = Standings(ranked_from=self.space.schedule_settled(self.sc))
        else:
            self.record = SearchRecord.resume(tracker, self.checkpoint.parent_run_id, command)
            ck = self.checkpoint
            self.standings = Standings(ck.records, ck.best, ck.best_history, self.space.schedule_settled(self.sc))
        self.lineage = Lineage(self.space.genes, self.record.trained_state)
        self.generation = max(self.checkpoint.generation, 0) if self.checkpoint else 0
        rc = cfg.ray
        if pool is None:
            slots = slots_for(rc.num_cpus_per_candidate, rc.num_gpus_per_candidate)
            slots = min(slots, self.sc.max_concurrent or slots)
            pool = Pool(slots, rc.num_cpus_per_candidate, rc.num_gpus_per_candidate, rc.max_retries)
        self.pool: Any = pool
        self.threads = max(1, int(rc.num_cpus_per_candidate))
        self.rungs = RungRecorder(self.record, self.lineage, self.standings, progress, self.sc.inheritance)
        if self.checkpoint is not None:
            self.rungs.take_stored(self.record.stored_children(), self.standings.records)

    @property
    def parent(self) -> str:
        return self.record.parent

    def run(self) -> SearchOutcome:
        """The generations, the winner's final training, the record closed."""
        ck, evolution = self.checkpoint, self.evolution
        try:
            if ck is not None:
                evolution.restore(ck)
                if ck.generation >= 0:
                    self.lineage.set_population(self.standings.records, ck.population)
            if ck is None:  # a checkpoint before anything trains: a driver killed in generation 0 resumes
                self.save_checkpoint(-1, None)
            if ck is None or ck.generation < 0:
                evolution.measure_initial()  # generation 0
                self.end_generation()
            while self.generation + 1 < self.sc.generations:
                self.generation += 1
                evolution.step()
                self.end_generation()
            self.final_training()
        except KeyboardInterrupt as e:
            self.abandon("KILLED", str(e) or "interrupted")
            raise
        except BaseException as e:
            self.abandon("FAILED", f"{type(e).__name__}: {e}")
            raise
        return self.finish()

    def _config(self, genome: dict[str, Any]) -> Config:
        """A candidate's config: the genome and the generation's schedule applied, each trained on
        ``threads`` threads."""
        cand = self.space.config_for(self.cfg, {**genome, **self.space.scheduled(self.sc, self.generation)})
        return cand.model_copy(update={"train": cand.train.model_copy(update={"threads": self.threads})})

    def measure_generation(self, population: torch.Tensor) -> torch.Tensor:
        """Train a generation's new candidates (and, with inheritance, its elites) through the rungs;
        returns the new candidates' fitness and writes the elites' into the population."""
        jobs = []
        for i, row in enumerate(population):
            unit = [float(x) for x in row]
            genome = self.space.decode(unit)
            jobs.append(Job(i, unit, genome, self._config(genome)))
        if self.sc.inheritance == "lamarckian":
            if self.lineage.members:
                jobs = [self.lineage.child(job, self._config) for job in jobs]
            if self.sc.elite:
                jobs += self.lineage.training_on(self.evolution.best_rows(self.sc.elite), len(jobs), self._config)
        fitness = torch.full((len(population),), FAILED_FITNESS)
        for job, rec in zip(jobs, self._train(jobs)):
            measured = FAILED_FITNESS if rec.fitness is None else rec.fitness
            if job.row is None:
                fitness[job.index] = measured
            else:
                self.evolution.set_fitness(job.row, measured)
        self.rungs.progressed(sum(j.done for j in jobs), len(jobs))  # the best, once every candidate is recorded
        return fitness

    def _train(self, jobs: Sequence[Job]) -> list[CandidateRecord]:
        """``jobs`` of this generation trained through the rungs, and recorded."""
        self.rungs.start_generation(self.generation, self.sc.generations, jobs)
        self.halving.run(jobs, self.pool, self.rungs)
        return [self.rungs.recorded(job) for job in jobs]

    def final_training(self) -> None:
        """``search.final_budget``: the best candidate so far trains on from its own state, as a child
        run of generation ``generations`` (after the last); its measurement joins the records."""
        best = self.standings.best
        if self.sc.final_budget <= 0 or best is None:
            return
        self.generation = self.sc.generations
        state = self.lineage.state(best[0].run_id)
        if state is None:
            return
        cfg = scaled_budget(self._config(best[0].genome), self.sc.final_budget)
        job = Lineage.continued(best[0], state, 0, cfg)
        (rec,) = self._train([job])
        self.rungs.progressed(int(job.done), 1)
        self.record.log_generation(self.generation, self.standings.final_metrics(rec))

    def end_generation(self) -> None:
        """A generation's metrics on the parent run, the new population as parents, a checkpoint."""
        metrics = self.standings.end_generation(self.generation, float(self.evolution.fitness.max()))
        metrics["workers_lost"] = float(getattr(self.pool, "replaced", 0))  # worker processes that died so far
        self.record.log_generation(self.generation, metrics)
        self.lineage.set_population(self.standings.records, self.evolution.population)  # only members are parents
        self.save_checkpoint(self.generation, self.evolution.fitness.clone())

    def save_checkpoint(self, generation: int, evals: Optional[torch.Tensor]) -> None:
        """Where the search stands after ``generation`` (``-1``: before generation 0), for ``--resume``."""
        s, evolution = self.standings, self.evolution
        config = self.cfg.model_dump(mode="json")
        ck = SearchCheckpoint(config, self.parent, generation, evolution.population, evolution.generator_state, evals)
        ck.records, ck.best, ck.best_history = s.records, s.best, s.best_history
        ck.save(self.sc.checkpoint)

    def abandon(self, status: str, reason: str) -> None:
        """The search stops early: the candidates under way end with it (a resume runs them again)."""
        self.pool.close()
        self.record.abandon(status, reason)

    def finish(self) -> SearchOutcome:
        self.pool.close()
        s = self.standings
        if s.best is None:
            self.record.fail("every candidate failed")
            return SearchOutcome(self.parent, {}, FAILED_FITNESS, s.records, s.best_history)
        rec, state_dict = s.best
        text = describe_search(self.cfg, self.space, self.record.command, rec)
        cfg = self.space.config_for(self.cfg, {**rec.genome, **self.space.scheduled(self.sc, self.generation)})
        test = self.record.finish(rec, cfg, state_dict, text, self.generation)
        return SearchOutcome(self.parent, rec.genome, s.best_fitness, s.records, s.best_history, test)


def run_search(
    cfg: Config,
    tracker: Tracker,
    *,
    resume: bool = False,
    address: Optional[str] = None,
    progress: Optional[ProgressFn] = None,
    command: Optional[str] = None,
    announce: Optional[Callable[[str], None]] = None,
) -> SearchOutcome:
    """Run (or resume) the search a config describes; returns the best genome and fitness.

    ``progress`` gets a :class:`~hybridopt.train.ProgressEvent` as a generation's candidates advance
    (``done`` of ``total``, the best fitness so far) and one with its ``line`` as each stops.
    ``command`` (the command line that started it) is kept on the parent run to reproduce it.
    ``announce`` is told the parent run once it exists (``search run ID (started|resumed) ...``).
    Ctrl-C ends the parent run as KILLED; the last generation checkpoint stays usable.  The
    figures are the caller's to log (:func:`hybridopt.results.report.log_figures_safely`).
    """
    if cfg.search is None:
        raise ValueError("config has no search section")
    init_ray(address or cfg.ray.address, cfg.ray.num_cpus)
    stop_on_signals()
    driver = Driver(cfg, tracker, resume, progress, command)
    if announce is not None:
        how = "resumed" if resume else "started"
        announce(f"search run {driver.parent} ({how}) in experiment {tracker.experiment!r} at {tracker.uri}")
    return driver.run()
