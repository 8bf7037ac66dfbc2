"""The search-gradient inner loop for control: evotorch PGPE (or SNES) over the flat parameters.

The simulator gives no gradient, so the centre ``mu`` of a Gaussian search distribution over
the flat vector of every learned parameter (weights, biases, ``alpha``, ``eta``, modulator,
rule coefficients) follows a search-gradient estimate.  PGPE samples antithetic pairs
``mu ± sigma ⊙ z`` and, with centred-rank fitness ``u`` in ``[-1/2, 1/2]``, estimates::

    g_mu    = sum_k (u_k+ - u_k-) / 2 * sigma ⊙ z_k            (a step ∝ sigma per coordinate)
    g_sigma = sum_k (u_k+ + u_k-) / 2 * (sigma^2 ⊙ z_k^2 - sigma^2) / sigma

then moves ``mu`` with ClipUp (normalised step ``center_lr``, momentum, speed limit) and
``sigma`` by ``stdev_lr`` (at most 20 % per generation).

``sigma`` starts per parameter group (:mod:`hybridopt.train.search_scale`).  (SNES has no
antithetic pairs; its natural-gradient ``center_lr`` is usually 1.)

Each generation plays every sample on the same ``episodes_per_sample`` training seeds in each
of the ``T`` training conditions ``task.train_conditions`` (common random numbers: every sample
sees the same seeds and conditions) with the observation normaliser frozen; a sample's fitness
is its mean return over them, and the observations it saw, in every training condition, are
merged into the normaliser afterwards.  A task that can (``rollout_members``) plays the
whole generation side by side, one network step per control step for every sample, condition
and seed at once (the network's per-step overhead, not the simulator, dominated a sample played
alone).  The result is the centre, evaluated (:func:`evaluate_policy`)
on held-out seeds in the training conditions, in the held-out ones ``task.conditions`` (``H``
of them, never played in training) and in ``standard`` (always, even when not trained on)::

    fitness     = R_train   = (1/T) sum_{c in train} R_c           (never a held-out return)
    R_heldout   = (1/H) sum_{c in held out} R_c
    retention   = R_c / R_standard,   retention/heldout = R_heldout / R_standard
    degradation = (R_standard - R_c) / |R_standard|     (= 1 - R_c / R_standard when R_standard > 0)

With ``task.fresh_weights`` every episode draws its own ``W`` and the flat vector leaves them out
(:func:`~hybridopt.train.search_scale.searched`): the search learns what builds a controller
within an episode, not a controller.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import time
from collections.abc import Callable
from typing import Any, Optional

import numpy as np
import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters
from torch.utils._pytree import tree_map

from hybridopt.config import Config, ESConfig, network_spec, parse_config
from hybridopt.evo import PGPE, SNES, Problem, SolutionBatch
from hybridopt.snn.kernels import KernelBudget, cpu_numerics
from hybridopt.snn.network import PlasticSNN
from hybridopt.tasks import EVAL_SEED_OFFSET, make_task
from hybridopt.tasks.base import ControlTask, ObsNormalizer, ObsStats, PopulationControlTask
from hybridopt.train.policy_eval import evaluate_policy
from hybridopt.train.result import ProgressEvent, ProgressFn, TrainResult, TrainState
from hybridopt.train.search_scale import group_masks, search_stdev, searched

__all__ = [
    "build_policy",
    "evaluate_policy",
    "load_policy",
    "policy_state_dict",
    "train_es",
]


def policy_budget(es: ESConfig) -> KernelBudget:
    """What an ES run may spend, as the kernel choice reads it: its episodes and CPU seconds."""
    episodes = es.generations * es.popsize * es.episodes_per_sample
    return KernelBudget(steps=episodes, cpu_s=60.0 * es.cpu_minutes if es.cpu_minutes else math.inf)


def build_policy(cfg: Config) -> tuple[ControlTask, PlasticSNN]:
    """The task and the initial policy network: readout weights scaled by ``task.readout_scale``
    (at full scale they saturate every action and the control cost dominates)."""
    task = make_task(cfg.task)
    if not isinstance(task, ControlTask):
        raise ValueError(f"the ES inner loop trains control tasks (played in a simulator), not {cfg.task.name!r}")
    spec = network_spec(cfg, task.n_in, task.n_out)
    net = PlasticSNN(spec, seed=cfg.seed)
    net.set_budget(policy_budget(cfg.es))
    net.requires_grad_(False)
    net.projections["readout"].W.mul_(cfg.task.readout_scale)
    return task, net


def policy_state_dict(net: PlasticSNN, normalizer: ObsNormalizer) -> dict[str, torch.Tensor]:
    """Weights plus the frozen observation statistics (``obs_norm.*``): what replays the policy."""
    out = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    out.update(normalizer.tensors())
    return out


def load_policy(cfg: Config, state_dict: dict[str, torch.Tensor]) -> tuple[ControlTask, PlasticSNN, ObsNormalizer]:
    """Rebuild ``(task, network, normaliser)`` from :func:`policy_state_dict`'s output."""
    task, net = build_policy(cfg)
    weights = {k: v for k, v in state_dict.items() if not k.startswith("obs_norm.")}
    net.load_state_dict(weights)
    return task, net, ObsNormalizer.from_tensors(state_dict)


def _searched(task: ControlTask, net: PlasticSNN) -> list[torch.nn.Parameter]:
    """The parameters the flat vector holds (without ``W`` when each episode draws its own)."""
    return [p for _, p in searched(net, task.cfg.fresh_weights)]


def _plain(t: torch.Tensor) -> torch.Tensor:
    """A private plain-tensor copy (evotorch hands out read-only tensor subclasses, whose
    ``__torch_function__`` would slow every network step)."""
    return t.detach().as_subclass(torch.Tensor).clone()


def _play(
    task: ControlTask, net: PlasticSNN, solution: torch.Tensor, seeds: list[int], normalizer: ObsNormalizer
) -> tuple[float, ObsStats]:
    """Mean return of one sample over ``seeds`` in every training condition (the mean over the
    conditions of the mean over the seeds), and the observations it saw in all of them."""
    vector_to_parameters(solution, _searched(task, net))
    stats = ObsStats.empty(task.n_in)
    params = net.params()
    means = [
        task.rollout(net, params, seeds, normalizer, condition=c, stats=stats).returns.mean()
        for c in task.cfg.train_conditions
    ]
    return float(np.mean(means)), stats


def _play_all(
    task: ControlTask, net: PlasticSNN, solutions: list[torch.Tensor], seeds: list[int], normalizer: ObsNormalizer
) -> list[tuple[float, ObsStats]]:
    """:func:`_play` for every sample; where the task plays many parameter sets side by side
    (:class:`PopulationControlTask`), all samples' episodes are stepped together (the same fitness up to the
    float rounding of the batched step, whatever the samples it is played with)."""
    if not isinstance(task, PopulationControlTask):
        return [_play(task, net, x, seeds, normalizer) for x in solutions]
    searched_params = _searched(task, net)
    members = []
    for x in solutions:
        vector_to_parameters(x, searched_params)
        members.append(tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, net.params()))
    stats = [ObsStats.empty(task.n_in) for _ in solutions]
    returns = task.rollout_members(net, members, seeds, normalizer, conditions=task.cfg.train_conditions, stats=stats)
    # the mean over the conditions of the mean over the seeds, as _play takes it
    return [(float(np.mean([r.mean() for r in per])), st) for per, st in zip(returns, stats)]


# Inside an episode-worker process only: its own task and network, built once.
_WORKER_POLICY: dict[str, tuple[ControlTask, PlasticSNN]] = {}


def _worker_init(config: dict[str, Any]) -> None:
    cpu_numerics(1)
    _WORKER_POLICY["policy"] = build_policy(parse_config(config))


def _worker_play(
    job: tuple[list[torch.Tensor], list[int], ObsNormalizer],
) -> tuple[list[tuple[float, ObsStats]], float]:
    cpu0 = time.process_time()
    task, net = _WORKER_POLICY["policy"]
    solutions, seeds, normalizer = job
    return _play_all(task, net, solutions, seeds, normalizer), time.process_time() - cpu0


class _Players:
    """Plays a generation's samples: here, or split in contiguous chunks over ``workers``
    spawned processes (the CPUs a candidate declares).  Results come back in sample order, so
    the outcome does not depend on the number of workers; ``worker_cpu`` adds up their CPU time."""

    def __init__(self, cfg: Config, task: ControlTask, net: PlasticSNN, workers: int):
        self.task, self.net = task, net
        self.worker_cpu = 0.0
        self.pool = None
        if workers > 1:
            ctx = mp.get_context("spawn")
            self.pool = ctx.Pool(workers, initializer=_worker_init, initargs=(cfg.model_dump(mode="json"),))
            self.workers = workers

    def play(
        self, solutions: list[torch.Tensor], seeds: list[int], normalizer: ObsNormalizer
    ) -> list[tuple[float, ObsStats]]:
        if self.pool is None:
            return _play_all(self.task, self.net, solutions, seeds, normalizer)
        n = len(solutions)
        bounds = [round(i * n / self.workers) for i in range(self.workers + 1)]
        jobs = [(solutions[a:b], seeds, normalizer) for a, b in zip(bounds, bounds[1:]) if b > a]
        out: list[tuple[float, ObsStats]] = []
        for results, cpu in self.pool.map(_worker_play, jobs):
            out += results
            self.worker_cpu += cpu
        return out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


class _EpisodeProblem(Problem):
    """Maximise the mean return of a sample; ``play(solutions) -> returns`` plays a batch."""

    def __init__(self, center: torch.Tensor, seed: int, play: Callable[[list[torch.Tensor]], list[float]]):
        self.play = play
        super().__init__(
            "max", solution_length=center.numel(), initial_bounds=(-1.0, 1.0), seed=seed, dtype=torch.float32
        )

    def _evaluate_batch(self, batch: SolutionBatch) -> None:
        returns = self.play([_plain(v) for v in batch.values])
        batch.set_evals(torch.tensor(returns, dtype=torch.float32))


def _searcher(problem: Problem, center: torch.Tensor, stdev: torch.Tensor, es: ESConfig):
    if es.algorithm == "snes":
        # SNES: natural-gradient update of mu and log-sigma; no antithetic sampling.
        return SNES(
            problem,
            popsize=es.popsize,
            center_init=center,
            stdev_init=stdev,
            center_learning_rate=es.center_lr,
            stdev_learning_rate=es.stdev_lr,
            ranking_method=es.ranking,
        )
    optimizer_config: dict[str, Any] = {}
    if es.optimizer == "clipup":
        optimizer_config["max_speed"] = es.max_speed if es.max_speed is not None else 2.0 * es.center_lr
    return PGPE(
        problem,
        popsize=es.popsize,
        center_init=center,
        stdev_init=stdev,
        center_learning_rate=es.center_lr,
        stdev_learning_rate=es.stdev_lr,
        optimizer=es.optimizer,
        optimizer_config=optimizer_config or None,
        ranking_method=es.ranking,
        symmetric=True,
    )


def train_es(
    cfg: Config,
    progress: Optional[ProgressFn] = None,
    *,
    start: Optional[TrainState] = None,
    cpu_budget_s: Optional[float] = None,
) -> TrainResult:
    """Train one locomotion configuration; never raises for a numerical failure or an error
    inside training: those end the run as a ``FAILED`` :class:`TrainResult` with the reason.

    From ``start`` (a :class:`TrainState` of this config's policy) the search goes on: its centre
    is the state's weights, its observation statistics the state's, and, where the state has its
    ``optimizer`` (``{"stdev": ...}``), its search scales; generation numbers follow on from
    ``start.step``.  (The centre optimiser's momentum starts afresh.)  The call runs at most
    ``es.generations`` further generations and ``cpu_budget_s`` CPU seconds (default
    ``es.cpu_minutes``)."""
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    cpu_numerics(1)  # B <= a few episodes: more threads only add overhead
    es = cfg.es
    history: list[tuple[int, dict[str, float]]] = []
    gen0 = start.step if start is not None else 0
    generation = gen0
    episodes = start.episodes if start is not None else 0
    players: Optional[_Players] = None

    def cpu_used() -> float:
        return time.process_time() - cpu0 + (players.worker_cpu if players is not None else 0.0)

    try:
        if start is not None:
            task, net, normalizer = load_policy(cfg, start.model)
        else:
            task, net = build_policy(cfg)
        players = _Players(cfg, task, net, es.workers or cfg.train.threads)
        fresh = task.cfg.fresh_weights
        center = parameters_to_vector(_searched(task, net)).clone()
        stdev = search_stdev(net, es, fresh)
        if start is not None and start.optimizer is not None:
            stdev = start.optimizer["stdev"].clone()
        masks = group_masks(net, fresh)
        rng = np.random.default_rng(cfg.seed + 7919 * gen0)
        if start is not None and start.rng is not None:
            rng.bit_generator.state = start.rng
        if cpu_budget_s is None:
            cpu_budget_s = 60.0 * es.cpu_minutes if es.cpu_minutes else math.inf

        if start is None:
            # The first generation should not see raw observations: one episode of the initial policy
            # in each training condition.
            stats = ObsStats.empty(task.n_in)
            identity = ObsNormalizer.identity(task.n_in)
            first = [int(rng.integers(EVAL_SEED_OFFSET))]
            for c in task.cfg.train_conditions:
                task.rollout(net, net.params(), first, identity, condition=c, stats=stats)
            normalizer = identity.merged(stats)
            episodes += len(task.cfg.train_conditions)

        gen_seeds: list[int] = []
        gen_stats: list[ObsStats] = []

        def play(solutions: list[torch.Tensor]) -> list[float]:
            results = players.play(solutions, gen_seeds, normalizer)
            gen_stats.extend(st for _, st in results)
            return [r for r, _ in results]

        problem = _EpisodeProblem(center, cfg.seed, play)
        searcher = _searcher(problem, center, stdev, es)
        while generation - gen0 < es.generations and cpu_used() < cpu_budget_s:
            gen_seeds[:] = [int(s) for s in rng.integers(EVAL_SEED_OFFSET, size=es.episodes_per_sample)]
            searcher.step()
            generation += 1
            episodes += es.popsize * es.episodes_per_sample * len(task.cfg.train_conditions)
            for st in gen_stats:  # in sample order: the same normaliser whatever the number of workers
                normalizer = normalizer.merged(st)
            gen_stats.clear()
            evals = searcher.population.evals[:, 0]
            center = _plain(searcher.status["center"])
            if not (torch.isfinite(evals).all() and torch.isfinite(center).all()):
                return TrainResult.failure(
                    f"non-finite return or centre at generation {generation}",
                    history=history,
                    steps=generation,
                    episodes=episodes,
                    wall_time=time.perf_counter() - t0,
                    cpu_time=cpu_used(),
                )
            sigma = _plain(searcher.status["stdev"])
            stdev = sigma
            metrics = {
                "train/return_mean": float(evals.mean()),
                "train/return_best": float(evals.max()),
                **{f"train/stdev/{g}": float(sigma[m].mean()) for g, m in masks.items()},
            }
            if generation % es.eval_every == 0 or generation - gen0 == es.generations:
                vector_to_parameters(center, _searched(task, net))
                metrics.update(evaluate_policy(task, net, normalizer, cfg.seed, conditions=[]))
                episodes += task.cfg.eval_seeds * len({"standard", *task.cfg.train_conditions})
            history.append((generation, metrics))
            if progress is not None:
                progress(ProgressEvent(generation, gen0 + es.generations, metrics))
        vector_to_parameters(center, _searched(task, net))
        final = evaluate_policy(task, net, normalizer, cfg.seed)
        episodes += task.cfg.eval_seeds * len({"standard", *task.cfg.train_conditions, *task.cfg.conditions})
        if not all(math.isfinite(v) for k, v in final.items() if k.startswith("eval/return/")):
            raise FloatingPointError("non-finite evaluation return")
    except Exception as e:  # a candidate must not take its caller down
        return TrainResult.failure(
            f"{type(e).__name__}: {e}",
            history=history,
            steps=generation,
            episodes=episodes,
            wall_time=time.perf_counter() - t0,
            cpu_time=cpu_used(),
        )
    finally:
        if players is not None:
            players.close()
    final["fitness"] = final["eval/return/train"]
    state_dict = policy_state_dict(net, normalizer)
    cpu = cpu_used()
    return TrainResult(
        fitness=final["fitness"],
        final_metrics=final,
        history=history,
        state_dict=state_dict,
        wall_time=time.perf_counter() - t0,
        cpu_time=cpu,
        steps=generation,
        episodes=episodes,
        state=TrainState(
            model=state_dict,
            optimizer={"stdev": stdev.clone()},
            step=generation,
            cpu_s=(start.cpu_s if start is not None else 0.0) + cpu,
            episodes=episodes,
            rng=rng.bit_generator.state,
        ),
    )
