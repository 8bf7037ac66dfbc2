"""The outer loop: an evotorch genetic algorithm over genomes whose candidates keep their training.

Generation 0 is the initial population (``population`` random genomes); every later
generation keeps the ``elite`` best and adds ``population - elite`` children (tournament
selection, one-point cross-over, Gaussian mutation, categorical resampling).

Training is not thrown away.  With ``search.inheritance: lamarckian`` (the default) a child
starts from the trained state of the previous population's member that shares most of its
genes (:func:`~hybridopt.search.inherit.inherit` keeps what still means the same) and the
``elite`` survivors train on from their own state, measured again (the best fitness so far is
kept by the parent run).  Inside a generation, successive halving (``search.rungs``,
``search.keep``) trains every candidate to the first rung and only the best on, each promotion
made as soon as its place is certain, so slots do not wait for a rung's last candidate while
promotable work exists; the outcome does not depend on the order results arrive in.

The rooms: :mod:`~hybridopt.search.dispatch` (Ray: a pool of long-lived actors, the only module
that imports Ray, and the stop on signals), :mod:`~hybridopt.search.record` (MLflow: one parent
run, one child run per candidate, opened when it is dispatched and ended at the rung where it
stops; the driver is the only writer), :mod:`~hybridopt.search.ga` (the evotorch GA),
:mod:`~hybridopt.search.halving` (which candidate goes on), :mod:`~hybridopt.search.inherit`
(what a child inherits, and from whom), :mod:`~hybridopt.search.driver` (a generation's
training, records and checkpoint, and the winner's final training) and this loop, which runs
the GA around the driver.  Inner loops never see Ray or MLflow.

Resume from any moment: a checkpoint is written before generation 0 and after each generation;
``resume=True`` continues the same parent run from it, takes every child the store holds as
finished (its rungs, fitness and trained state ``state.pt``) without re-running or re-logging
it, deletes the runs a killed driver left RUNNING and runs those candidates again.  Ctrl-C ends
the parent and the candidates under way as KILLED.  With ``search.final_budget`` the best
candidate then trains on from its own state (a resume of a finished search runs only that).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

from hybridopt.config import Config
from hybridopt.search.dispatch import init_ray, stop_on_signals
from hybridopt.search.driver import Driver
from hybridopt.search.ga import FAILED_FITNESS, GenomeProblem, make_algorithm
from hybridopt.search.outcome import CandidateRecord, SearchOutcome
from hybridopt.tracking import Tracker
from hybridopt.train import ProgressFn

__all__ = ["FAILED_FITNESS", "CandidateRecord", "GenomeProblem", "SearchOutcome", "make_algorithm", "run_search"]


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
    Ctrl-C ends the parent run as KILLED; the last generation checkpoint stays usable.
    """
    if cfg.search is None:
        raise ValueError("config has no search section")
    init_ray(address or cfg.ray.address, cfg.ray.num_cpus)
    stop_on_signals()
    driver = Driver(cfg, tracker, resume, progress, command)
    sc = cfg.search
    if announce is not None:
        how = "resumed" if resume else "started"
        announce(f"search run {driver.parent} ({how}) in experiment {tracker.experiment!r} at {tracker.uri}")
    try:
        problem = GenomeProblem(len(driver.space), cfg.seed, driver.evaluate_generation)
        ga = make_algorithm(problem, sc, driver.space)
        driver.ga = ga
        st = driver.state
        if st is not None:
            ga.population.set_values(st["population"])
            problem.generator.set_state(st["generator"])
            driver.generation = max(st["generation"], 0)
        if st is None or st["generation"] < 0:
            if st is None:  # a checkpoint before anything trains: a driver killed in generation 0 resumes
                driver.checkpoint(-1, ga.population.values, None, problem.generator)
            problem.evaluate(ga.population)  # generation 0
            driver.end_generation(ga, problem)
        else:
            ga.population.set_evals(st["evals"])
        # The initial population is evaluated above, so the GA must not evaluate it again.
        ga._first_iter = False
        while driver.generation + 1 < sc.generations:
            driver.generation += 1
            ga.step()
            driver.end_generation(ga, problem)
        driver.final_training()
    except KeyboardInterrupt as e:
        driver.abandon("KILLED", str(e) or "interrupted")
        raise
    except BaseException as e:
        driver.abandon("FAILED", f"{type(e).__name__}: {e}")
        raise
    return driver.finish()
