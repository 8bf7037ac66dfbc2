"""The gradient inner loop: Adam on every learned parameter, BPTT through the surrogate.

Each step draws a fresh batch of episodes from the training generator (seeded by the
config's ``seed``); evaluation uses held-out episodes from a separate generator seeded by
``EVAL_SEED_OFFSET + seed`` (never used for training), the same set at every evaluation,
so the ``eval/accuracy`` curve is comparable across steps and reproducible from saved
weights.
"""

from __future__ import annotations

import math
import resource
import time
from typing import Any, Optional

import torch

from hybridopt.config import Config, TrainConfig, network_spec
from hybridopt.snn.kernels import KernelBudget, cpu_numerics
from hybridopt.snn.network import PlasticSNN
from hybridopt.tasks import EVAL_SEED_OFFSET, TEST_SEED_OFFSET, Batch, Task, make_task
from hybridopt.tasks.base import has_observer, observer_accuracy
from hybridopt.train.result import ProgressEvent, ProgressFn, TrainResult, TrainState

__all__ = [
    "EVAL_SEED_OFFSET",
    "build",
    "evaluate",
    "prepare_kernel",
    "resolve_device",
    "test_accuracy",
    "train_gradient",
]


def _cpu_with_children() -> float:
    r, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


def prepare_kernel(net: PlasticSNN, task: Task, batch_size: int) -> float:
    """Get the kernel this network trains on ready before its budget starts: build the native
    library if this machine has none, or compile the structure (one sequence forward and backward
    on a throw-away batch, its gradients discarded).  Returns the CPU seconds it took, the
    compiler's processes included: reported as ``compile_cpu_s``, never charged to the budget.
    Seconds where nothing had to be built (a cached library, an already compiled structure)."""
    cpu0 = _cpu_with_children()
    kernel = net.kernel_for(batch_size)
    if kernel == "native":
        from hybridopt.snn.native import library

        library()
    elif kernel == "compiled":
        x = task.batch(batch_size, torch.Generator().manual_seed(0)).x.to(net.b_hidden.device)
        y, s, _ = net(x)
        out = y.sum() + s.sum()
        if out.requires_grad:  # (not where every parameter is held)
            out.backward()
        net.zero_grad(set_to_none=True)
    return _cpu_with_children() - cpu0


def build(cfg: Config) -> tuple[Task, PlasticSNN]:
    """The task and the freshly initialised network a config describes."""
    task = make_task(cfg.task)
    net = PlasticSNN(network_spec(cfg, task.n_in, task.n_out), seed=cfg.seed)
    return task, net


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when a GPU is visible (Ray shows one only to candidates that declare it)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _to(batch: Batch, device: torch.device) -> Batch:
    return Batch(batch.x.to(device), batch.target.to(device)) if device.type != "cpu" else batch


@torch.no_grad()
def evaluate(net: PlasticSNN, task: Task, cfg: Config) -> dict[str, float]:
    """Mean fitness, loss and firing rate on the held-out evaluation episodes.

    Episodes are drawn on the CPU from a fixed seed, so they are the same on every device."""
    gen = torch.Generator().manual_seed(EVAL_SEED_OFFSET + cfg.seed)
    device = net.b_hidden.device
    fit, loss, rate = [], [], []
    for _ in range(cfg.train.eval_batches):
        batch = _to(task.batch(cfg.train.batch_size, gen), device)
        y, s, _ = net(batch.x)
        fit.append(task.fitness(y, batch).mean().item())
        loss.append(task.loss(y, batch).item())
        rate.append(s.mean().item())
    n = len(fit)
    return {"eval/accuracy": sum(fit) / n, "eval/loss": sum(loss) / n, "eval/firing_rate": sum(rate) / n}


@torch.no_grad()
def test_accuracy(net: PlasticSNN, task: Task, cfg: Config, episodes: int) -> dict[str, float]:
    """The network's fitness on ``episodes`` fresh episodes from the seeds reserved for testing
    (``TEST_SEED_OFFSET + seed``): ``test/accuracy``, its standard error ``sd / sqrt(n)`` over the
    episodes, and ``test/episodes``.  No evaluation or selection ever sees these episodes."""
    gen = torch.Generator().manual_seed(TEST_SEED_OFFSET + cfg.seed)
    device = net.b_hidden.device
    fits = []
    left = episodes
    while left > 0:
        batch = _to(task.batch(min(left, 256), gen), device)
        # run in batches of training's size: the shapes the network's kernel was prepared for
        y = torch.cat([net(x)[0] for x in batch.x.split(cfg.train.batch_size)])
        fits.append(task.fitness(y, batch).double().cpu())
        left -= batch.x.shape[0]
    f = torch.cat(fits)
    se = f.std().item() / math.sqrt(len(f)) if len(f) > 1 else float("nan")
    out = {"test/accuracy": f.mean().item(), "test/accuracy_se": se, "test/episodes": float(len(f))}
    out["test/chance"] = float(task.chance)
    if has_observer(task):  # what the inputs allow: the task's reference observer on the same episodes
        out["test/observer"], out["test/observer_se"] = _observer(task, cfg.task.model_dump_json(), episodes, cfg.seed)
    return out


_observed: dict[tuple[str, int, int], tuple[float, float]] = {}


def _observer(task: Task, task_json: str, episodes: int, seed: int) -> tuple[float, float]:
    """The observer's score on the test episodes, the network's own (once per task config and
    seed in a process: a worker's candidates share it)."""
    key = (task_json, episodes, seed)
    if key not in _observed:
        _observed[key] = observer_accuracy(task, episodes, TEST_SEED_OFFSET + seed)
    return _observed[key]


def _cpu_state(obj: Any) -> Any:
    """A copy of an optimiser's state with every tensor on the CPU (to return or ship)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _cpu_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_state(v) for v in obj)
    return obj


def scheduled_lr(
    tc: TrainConfig, done_steps: int, cpu_spent_s: float, cpu_budget_s: float, lineage_cpu_s: float = 0.0
) -> float:
    """Adam's rate after ``done_steps`` steps and ``cpu_spent_s`` CPU seconds of this call::

        constant:  lr
        cosine:    lr * (f + (1 - f) * (1 + cos(pi p)) / 2),   f = lr_final,
                   p = min(1, max(done_steps / steps, cpu_spent_s / cpu_budget_s))

    ``p`` is the fraction of the call's budget spent, by whichever limit is nearer.  With
    ``lr_horizon_minutes`` it is the lineage's: ``p = min(1, (lineage_cpu_s + cpu_spent_s) /
    (60 lr_horizon_minutes))``, ``lineage_cpu_s`` the CPU seconds behind the state the call
    started from."""
    if tc.lr_schedule == "constant":
        return tc.lr
    if tc.lr_horizon_minutes is not None:
        p = (lineage_cpu_s + cpu_spent_s) / (60.0 * tc.lr_horizon_minutes)
    else:
        p = done_steps / tc.steps
        if math.isfinite(cpu_budget_s) and cpu_budget_s > 0:
            p = max(p, cpu_spent_s / cpu_budget_s)
    p = min(1.0, p)
    return tc.lr * (tc.lr_final + (1.0 - tc.lr_final) * 0.5 * (1.0 + math.cos(math.pi * p)))


def frozen_parameters(net: PlasticSNN, freeze: tuple[str, ...]) -> list[torch.nn.Parameter]:
    """The parameters ``train.freeze`` names in ``net`` (see :class:`~hybridopt.config.TrainConfig`):
    a projection's all, a projection's group (``weights``/``plasticity``/``rule``), or a bias.
    A group this network does not have (a static projection's ``plasticity``, a rule without
    coefficients' ``rule``) names nothing: held where it is, trivially, as a search whose genes
    switch plasticity off needs."""
    groups = net.parameter_groups()
    params = dict(net.named_parameters())
    chosen: list[torch.nn.Parameter] = []
    for entry in freeze:
        proj, _, group = entry.partition(".")
        if proj in ("b_hidden", "b_out"):
            names = [proj]
        else:
            names = [n for n, g in groups.items() if n.startswith(f"projections.{proj}.") and (not group or g == group)]
        chosen += [params[n] for n in names]
    return chosen


def hold(frozen: list[torch.nn.Parameter], held: bool) -> None:
    """Hold ``frozen`` (``held``) or release it.  A held parameter takes no part in autograd: it
    gets no gradient (Adam skips it, its moments untouched), and what only it needs is neither
    recorded nor differentiated (with the hidden layer frozen, the compiled steps run the
    layer's backward not at all: only the readout's)."""
    for p in frozen:
        p.requires_grad_(not held)


def kernel_budget(tc: TrainConfig, cpu_budget_s: float) -> KernelBudget:
    """What the kernel choice weighs a per-structure compile against: the call's budget, or the
    run's whole ``train.cpu_minutes`` where that is more (a search's rung trains a share of a
    candidate's budget, and its later rungs and children train the same structure in the same
    worker process, where the compiled unit is kept)."""
    whole = 60.0 * tc.cpu_minutes if tc.cpu_minutes else 0.0
    return KernelBudget(steps=tc.steps, cpu_s=max(cpu_budget_s, whole))


# keep_best's record: the step, its evaluation metrics, the network's state_dict and Adam's state there.
Best = tuple[int, dict[str, float], dict[str, torch.Tensor], dict[str, Any]]

# A batch whose gradient overflows is skipped (Adam would write NaN into every parameter); this
# many in a row end the run as failed: the network itself, not one batch, has diverged.
NONFINITE_PATIENCE = 10


def train_gradient(
    cfg: Config,
    progress: Optional[ProgressFn] = None,
    *,
    start: Optional[TrainState] = None,
    cpu_budget_s: Optional[float] = None,
) -> TrainResult:
    """Train one configuration; never raises for a numerical failure or an error inside
    training: those end the run as a ``FAILED`` :class:`TrainResult` with the reason.  A batch
    whose gradient is not finite is skipped (``skipped_steps`` counts them); ``NONFINITE_PATIENCE``
    of them in a row fail the run.

    From ``start`` (a :class:`TrainState` for this config's network) training goes on: the
    weights, and the optimiser's moments and the batch stream where the state has them; step
    numbers follow on from ``start.step``.  The call trains for at most ``train.steps`` further
    steps and ``cpu_budget_s`` further CPU seconds (default ``train.cpu_minutes``); the result's
    ``state`` continues from where it stopped."""
    t0 = time.perf_counter()
    cpu_numerics(cfg.train.threads)
    tc = cfg.train
    history: list[tuple[int, dict[str, float]]] = []
    step0 = start.step if start is not None else 0
    step = step0
    cpu0 = time.process_time()  # training's CPU, a failure's too (from after the kernel's preparation, below)

    def failure(reason: str) -> TrainResult:
        return TrainResult.failure(
            reason, history=history, steps=step, wall_time=time.perf_counter() - t0, cpu_time=time.process_time() - cpu0
        )

    try:
        task, net = build(cfg)
        if start is not None:
            net.load_state_dict(start.model)
        net.to(resolve_device(tc.device))
        device = net.b_hidden.device
        opt = torch.optim.Adam(net.parameters(), lr=tc.lr)
        frozen = frozen_parameters(net, tc.freeze)
        if start is not None and start.optimizer is not None:
            opt.load_state_dict(_cpu_state(start.optimizer))  # a copy: Adam steps its moments in place
            for group in opt.param_groups:  # the config's rate, not the state's (PBT may change it)
                group["lr"] = tc.lr
        gen = torch.Generator()
        if start is not None and start.rng is not None:
            gen.set_state(start.rng)
        else:  # a continued state without its stream draws batches its start did not see
            gen.manual_seed(cfg.seed + 7919 * step0)
        if cpu_budget_s is None:
            cpu_budget_s = 60.0 * tc.cpu_minutes if tc.cpu_minutes else math.inf
        net.set_budget(kernel_budget(tc, cpu_budget_s))
        hold(frozen, tc.freeze_steps is None or step0 < tc.freeze_steps)  # before the kernel is prepared for it
        compile_cpu_s = prepare_kernel(net, task, tc.batch_size)
        cpu0 = time.process_time()
        overflow = skipped = 0  # batches in a row / in all whose gradient overflowed (not applied)
        lineage_cpu_s = start.cpu_s if start is not None else 0.0
        best: Optional[Best] = None

        def kept(best: Optional[Best], at: int, metrics: dict[str, float]) -> Optional[Best]:
            """``keep_best``: the best evaluation so far, with the network and moments behind it."""
            if not tc.keep_best or (best is not None and metrics["eval/accuracy"] <= best[1]["eval/accuracy"]):
                return best
            evals = {k: v for k, v in metrics.items() if k.startswith("eval/")}
            model = {k: v.detach().clone() for k, v in net.state_dict().items()}
            return at, evals, model, _cpu_state(opt.state_dict())

        if tc.keep_best and start is not None:  # a continuation ends no worse than its start
            best = kept(best, step0, evaluate(net, task, cfg))
        first_overflow = ""
        while step - step0 < tc.steps and time.process_time() - cpu0 < cpu_budget_s:
            hold(frozen, tc.freeze_steps is None or step < tc.freeze_steps)
            batch = _to(task.batch(tc.batch_size, gen), device)
            y, s, _ = net(batch.x)
            task_loss = task.loss(y, batch)
            loss = task_loss
            if tc.rate_reg > 0:
                loss = loss + tc.rate_reg * (s.mean(dim=(0, 1)) - tc.rate_target).pow(2).mean()
            if not torch.isfinite(loss):
                return failure(f"non-finite loss at step {step}")
            opt.zero_grad(set_to_none=True)
            if loss.requires_grad:  # else every parameter is held: nothing to differentiate
                loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), tc.grad_clip)
            if not torch.isfinite(grad_norm):  # the step would write NaN into every parameter: skipped
                if not overflow:
                    first_overflow = f"at step {step} (loss {loss.item():.4g})"
                overflow += 1
                skipped += 1
                if overflow >= NONFINITE_PATIENCE:
                    why = f"non-finite gradient {first_overflow} and at each of the {overflow - 1} batches after it"
                    return failure(why)
                continue
            overflow = 0
            if tc.lr_schedule != "constant":
                lr = scheduled_lr(tc, step - step0, time.process_time() - cpu0, cpu_budget_s, lineage_cpu_s)
                for group in opt.param_groups:
                    group["lr"] = lr
            opt.step()
            step += 1
            metrics = {
                "train/loss": task_loss.item(),
                "train/accuracy": task.fitness(y.detach(), batch).mean().item(),
                "train/firing_rate": s.detach().mean().item(),
            }
            if tc.lr_schedule != "constant":
                metrics["train/lr"] = opt.param_groups[0]["lr"]
            if step % tc.eval_every == 0 or step - step0 == tc.steps:
                metrics.update(evaluate(net, task, cfg))
                best = kept(best, step, metrics)
            history.append((step, metrics))
            if progress is not None:
                progress(ProgressEvent(step, step0 + tc.steps, metrics))
        if history and history[-1][0] == step and "eval/accuracy" in history[-1][1]:  # evaluated at this step
            final = {k: v for k, v in history[-1][1].items() if k.startswith("eval/")}
        else:
            final = evaluate(net, task, cfg)
            history.append((step, final))
        if not math.isfinite(final["eval/loss"]):
            raise FloatingPointError("non-finite evaluation loss")
        best = kept(best, step, final)
        if best is not None:  # keep_best: the run ends on its best evaluation
            best_step, final, model, moments = best
            if best_step != step:
                net.load_state_dict(model)
                opt.load_state_dict(moments)
            final = {**final, "best_step": float(best_step)}
        if tc.test_episodes:
            final.update(test_accuracy(net, task, cfg, tc.test_episodes))
    except Exception as e:  # a candidate must not take its caller down
        return failure(f"{type(e).__name__}: {e}")
    final["fitness"] = final["eval/accuracy"]
    final["compile_cpu_s"] = compile_cpu_s
    final["skipped_steps"] = float(skipped)
    cpu = time.process_time() - cpu0
    state_dict = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    episodes = (start.episodes if start is not None else 0) + (step - step0) * tc.batch_size
    return TrainResult(
        fitness=final["eval/accuracy"],
        final_metrics=final,
        history=history,
        state_dict=state_dict,
        wall_time=time.perf_counter() - t0,
        cpu_time=cpu,
        steps=step,
        episodes=episodes,
        state=TrainState(
            model=state_dict,
            optimizer=_cpu_state(opt.state_dict()),
            step=step,
            cpu_s=(start.cpu_s if start is not None else 0.0) + cpu,
            episodes=episodes,
            rng=gen.get_state(),
        ),
    )
