"""What breaks when cue association is noisy: noise on one channel group at a time.

Networks (each a real ``train_gradient`` run, budgeted in CPU-minutes of its own process, 1 thread):

- ``handpicked``: ``configs/cue_association_noisy.yaml``'s network and plasticity (neuromodulated
  STDP on the input projection);
- ``winner``: the clean search winner's genome from the README (static input and recurrent,
  neuromodulated Hebbian on the readout, lr 0.0048, beta 0.886), as a train config.

Each is trained under five noise conditions (``--noise`` on the groups named; ``nowhere`` is the
clean task): ``nowhere``, ``cue``, ``feedback``, ``marker``, ``everywhere``.  Every trained network
is then re-measured under every condition on ``--episodes`` fresh episodes from the seed
``TEST_SEED`` (neither training, seeded ``seed + 7919 k``, nor evaluation, ``EVAL_SEED_OFFSET +
seed``, draws from it), beside chance and the reference observer under the same noise.  Accuracy
is the task's fitness (second half of the trials); ``± se`` is the standard error over episodes.

Then the probes, on the same test episodes: the neuromodulator ``M_t = tanh(w_M · [x_t, s_t] + b_M)``
and the plastic state ``H`` of the modulated projection, network trained and measured clean vs
trained and measured under noise everywhere:

- ``M fb+ / fb-``: mean ``M_t`` over feedback windows of trials whose target was present / absent;
  ``M ok / wrong``: the same for trials the network answered right / wrong; ``M sd out``: standard
  deviation of ``M_t`` outside feedback windows (what the modulator does when nothing is taught);
  ``sep``: ``(M fb+ - M fb-) / M sd out``.
- ``rate``: the hidden layer's mean firing rate (spikes per neuron per step).
- ``size aM / b``: the mean size of the modulated part ``a_j M_t`` of the learning rate
  ``eta_j(t) = a_j M_t + b_j`` against its constant part ``b_j`` (a large ``b`` is plasticity that
  no feedback gates).
- ``mean abs H t1 / t6 / t12``: mean ``|H|`` at the end of trials 1, 6, 12; ``clip``: fraction of ``H`` at
  ``±h_max`` at the end of the episode.
- ``noise share`` (input projection only): the rules are linear in the pre-synaptic activity, so
  each step's update splits exactly, ``eta ⊙ D(x) = eta ⊙ D(x_signal) + eta ⊙ D(x_noise)``, where
  ``x_signal`` are the spikes the clean task would have given (same seed: the task draws the signal
  before the noise) and ``x_noise = x - x_signal``; the share is ``sum |ΔH_noise| / (sum |ΔH_signal| +
  sum |ΔH_noise|)`` over the episode (before the clip).  ``H rows cue/mk/fb``: the share of ``|H|``
  (end of episode) on the cue, marker and feedback rows.

    python benchmarks/noise_diagnosis.py --minutes 3          # ~32 CPU-minutes (10 trainings)
    python benchmarks/noise_diagnosis.py --minutes 0.1 --episodes 64 --out /tmp/nd   # a dry run
    python benchmarks/noise_diagnosis.py --weights searched=mlruns/<exp>/<run>/artifacts/weights.pt

``--continued`` adds two runs of twice the budget: the clean-trained network trained on for
``--minutes`` under noise everywhere (a one-step noise curriculum), against the noise-trained one
trained on as long.  ``--weights NAME=PATH`` (repeatable) measures networks trained elsewhere (a
``weights.pt`` a train run or a search wrote: a search's winner) instead of training any: the same
channel-group columns, noise 0 / 0.1 / 0.2 / 0.3 on every channel beside the observer, and the
probes, clean and under noise everywhere; evaluation only, a few CPU-seconds a network.
Trained weights are kept under ``--out`` and reused (``--retrain`` trains again).  ``--lock PATH``
takes an exclusive ``flock`` on PATH around each heavy piece (a machine shared by several users).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple, Optional

import torch

from hybridopt.config import Config, load_config
from hybridopt.snn.catalogue import PROJECTIONS
from hybridopt.snn.network import StepConstants, network_step
from hybridopt.snn.plasticity import MODES, RULES, Activity, modulator_signal
from hybridopt.tasks import make_task
from hybridopt.tasks.base import observer_accuracy
from hybridopt.train.gradient import build
from hybridopt.train.weights import load_weights

ROOT = Path(__file__).resolve().parents[1]
TEST_SEED = 7_000_001  # test episodes: above the evaluation seeds, below nothing training draws
NETWORKS: dict[str, tuple[str, list[str]]] = {
    "handpicked": ("configs/cue_association_noisy.yaml", []),
    "winner": (
        "configs/cue_association.yaml",
        [
            "plasticity.input.rule=none",
            "plasticity.readout.rule=hebbian",
            "plasticity.readout.modulation=neuromodulated",
            "train.lr=0.0048",
            "network.beta=0.886",
        ],
    ),
}
CONDITIONS: dict[str, Optional[list[str]]] = {
    "nowhere": None,
    "cue": ["cue"],
    "feedback": ["feedback"],
    "marker": ["marker"],
    "everywhere": ["cue", "feedback", "marker"],
}
# Continued runs at equal compute: trained clean, then on under noise (a curriculum of one step)
# against trained under noise all along.
CONTINUATIONS = ("nowhere+everywhere", "everywhere+everywhere")


@contextlib.contextmanager
def locked(path: Optional[str]) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` for the block (nothing without a path)."""
    if path is None:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def condition_overrides(condition: str, noise: float) -> list[str]:
    """``--set`` overrides that put ``noise`` on the condition's channel groups (none: clean)."""
    groups = CONDITIONS[condition]
    if groups is None:
        return ["task.noise=0.0"]
    return [f"task.noise={noise}", f"task.noise_on=[{', '.join(groups)}]"]


def config(network: str, condition: str, noise: float, extra: tuple[str, ...] = ()) -> Config:
    path, overrides = NETWORKS[network]
    return load_config(ROOT / path, overrides + condition_overrides(condition, noise) + list(extra))


def weights_path(out: Path, network: str, condition: str) -> Path:
    return out / f"{network}__{condition}.pt"


def condition_of(run: str) -> str:
    """The noise a run was trained under last: ``A+B`` is run ``A`` trained on under condition ``B``."""
    return run.split("+")[-1]


def train_one(network: str, run: str, noise: float, minutes: float, out: Path) -> None:
    """Train one network (in this process) and save what it learned.  A run ``A+B`` starts from run
    ``A``'s weights (a fresh optimiser) and trains on under condition ``B``; its steps and CPU count
    both pieces."""
    from hybridopt.train.gradient import train_gradient
    from hybridopt.train.result import TrainState

    extra = (f"train.cpu_minutes={minutes}", "train.steps=1000000", "train.eval_every=1000000", "train.threads=1")
    cfg = config(network, condition_of(run), noise, extra)
    start, before = None, {"cpu_s": 0.0, "steps": 0, "episodes": 0}
    if "+" in run:
        before = torch.load(weights_path(out, network, run.rsplit("+", 1)[0]), weights_only=True)
        start = TrainState(before["state_dict"], None, before["steps"], before["cpu_s"], before["episodes"])
    r = train_gradient(cfg, start=start)
    if r.failed:
        raise SystemExit(f"{network}/{run}: training failed: {r.failure}")
    out.mkdir(parents=True, exist_ok=True)
    cpu_s = before["cpu_s"] + r.cpu_time
    torch.save(
        {"state_dict": r.state_dict, "cpu_s": cpu_s, "steps": r.steps, "episodes": r.episodes},
        weights_path(out, network, run),
    )
    print(f"trained {network}/{run}: {r.steps} steps, {cpu_s / 60:.2f} CPU-min, eval {r.fitness:.3f}")


def runs(args: argparse.Namespace) -> list[str]:
    """The runs to train and measure: one per condition, then (``--continued``) the continuations."""
    return list(CONDITIONS) + (list(CONTINUATIONS) if args.continued else [])


def train_all(args: argparse.Namespace) -> None:
    """Each training in a fresh process (a process's first compile counts in its own budget only)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for network in args.networks:
        for run in runs(args):
            if weights_path(args.out, network, run).exists() and not args.retrain:
                continue
            cmd = [sys.executable, __file__, "--train-one", network, run, "--noise", str(args.noise)]
            cmd += ["--minutes", str(args.minutes), "--out", str(args.out)]
            with locked(args.lock):
                subprocess.run(cmd, env=env, check=True)


def load(out: Path, network: str, run: str, noise: float) -> tuple[Any, dict[str, Any]]:
    """The network of a run (weights from ``out``) and what its training cost."""
    saved = torch.load(weights_path(out, network, run), weights_only=True)
    _, net = build(config(network, condition_of(run), noise))
    net.load_state_dict(saved["state_dict"])
    net.eval()
    return net, saved


@torch.no_grad()
def accuracy(net: Any, task: Any, episodes: int, seed: int, batch_size: int = 128) -> tuple[float, float]:
    """Mean fitness and its standard error over ``episodes`` fresh episodes seeded ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    fit = []
    for start in range(0, episodes, batch_size):
        batch = task.batch(min(batch_size, episodes - start), gen)
        y, _, _ = net(batch.x)
        fit.append(task.fitness(y, batch))
    f = torch.cat(fit).double()
    return f.mean().item(), f.std().item() / math.sqrt(len(f))


def cell(m: float, se: float) -> str:
    return f"{m:.3f} ± {se:.3f}"


def columns(lead: list[str], conds: list[str]) -> list[str]:
    """A table's head: the ``lead`` columns, then one per condition measured under."""
    return [
        "| " + " | ".join(lead + [f"measured: {c}" for c in conds]) + " |",
        "|" + "---|" * (len(lead) + len(conds)),
    ]


def accuracy_table(args: argparse.Namespace, network: str) -> list[str]:
    """Rows: trained under each condition; columns: measured under each; then the observer."""
    conds = list(CONDITIONS)
    lines = [
        f"**{network}**: trained ({args.minutes:g} CPU-min each) under the row's noise, measured under the"
        f" column's on {args.episodes} fresh episodes (seed {TEST_SEED}); chance 0.5",
        "",
        *columns(["trained under", "steps", "CPU-min"], conds),
    ]
    tasks = {c: make_task(config(network, c, args.noise).task) for c in conds}
    for trained in runs(args):
        with locked(args.lock):
            net, saved = load(args.out, network, trained, args.noise)
            row = [cell(*accuracy(net, tasks[c], args.episodes, TEST_SEED)) for c in conds]
        row[conds.index(condition_of(trained))] = f"**{row[conds.index(condition_of(trained))]}**"
        lines.append(f"| {trained} | {saved['steps']} | {saved['cpu_s'] / 60:.2f} | " + " | ".join(row) + " |")
    obs = [cell(*observer_accuracy(tasks[c], args.episodes, TEST_SEED)) for c in conds]
    lines.append("| *observer* | - | - | " + " | ".join(obs) + " |")
    return lines


class Probe(NamedTuple):
    """What the modulated projection's plasticity did over a set of episodes (see the module docstring)."""

    m_present: float
    m_absent: float
    m_right: float
    m_wrong: float
    m_sd_out: float
    gain_mod: float
    gain_const: float
    h_trials: tuple[float, float, float]
    clip: float
    noise_share: Optional[float]
    rows: Optional[tuple[float, float, float]]
    rate: float


@torch.no_grad()
def probe(net: Any, task: Any, clean_task: Any, episodes: int, seed: int) -> dict[str, Probe]:
    """Step the network by hand over ``episodes`` test episodes; one :class:`Probe` per modulated
    projection.  ``clean_task`` (the same task without noise, same seed) gives the signal spikes."""
    spec, params = net.spec, net.params()
    names = [n for n in PROJECTIONS if spec.projection(n).modulated and MODES[spec.projection(n).modulation].update]
    c = task.cfg
    fb0 = c.cue_steps + c.response_steps
    batch = task.batch(episodes, torch.Generator().manual_seed(seed))
    signal = clean_task.batch(episodes, torch.Generator().manual_seed(seed)).x
    assert torch.all(batch.x >= signal), "the clean task's spikes are not a subset of the noisy task's"
    noise_x = batch.x - signal
    B, T, _ = batch.x.shape
    state = net.initial_state(B)
    consts = StepConstants.of(spec)
    acc: dict[str, dict[str, Any]] = {
        n: {"M": [], "gm": 0.0, "gc": 0.0, "H": [], "sig": 0.0, "noi": 0.0} for n in names
    }
    traces = {n: (torch.zeros(B, c_in), torch.zeros(B, c_in)) for n in names for c_in in [spec.shape(n)[0]]}
    ys, spikes = [], 0.0
    for t in range(T):
        x = batch.x[:, t]
        old = state
        y, s, state = network_step(params, spec, x, state, None, consts)
        ys.append(y)
        spikes += s.mean().item() / T
        features = torch.cat([x, s, y] if spec.modulator_reads_output else [x, s], dim=1)
        for n in names:
            p, ps = getattr(params, n), spec.projection(n)
            M, _ = modulator_signal(features, p.w_M, p.b_M, getattr(old, n).drive, ps.modulator_tau)
            a = acc[n]
            a["M"].append(M)
            if p.mod.mod_a is not None:
                a["gm"] += (p.mod.mod_a * M.unsqueeze(1)).abs().mean().item() / T
                a["gc"] += p.mod.mod_b.abs().mean().item() / T
            if (t + 1) % task.trial_steps == 0:
                a["H"].append(getattr(state, n).H.abs().mean().item())
            if n == "input" and not MODES[ps.modulation].has_eligibility:
                # the rule is linear in the pre-synaptic activity: split each step's update exactly
                lam, st_old, st_new = ps.trace_decay, getattr(old, n), getattr(state, n)
                tr_sig = lam * traces[n][0] + signal[:, t]
                tr_noi = lam * traces[n][1] + noise_x[:, t]
                traces[n] = (tr_sig, tr_noi)
                gain = MODES[ps.modulation].gain(p.mod, M)
                upd = RULES[ps.rule].update
                post = (st_new.post_trace, s)
                d_sig = gain * upd(Activity(tr_sig, post[0], signal[:, t], post[1]), st_old.H, st_old.phi, p.coeffs)
                d_noi = gain * upd(Activity(tr_noi, post[0], noise_x[:, t], post[1]), st_old.H, st_old.phi, p.coeffs)
                full = gain * upd(Activity(st_new.pre_trace, post[0], x, post[1]), st_old.H, st_old.phi, p.coeffs)
                assert torch.allclose(d_sig + d_noi, full, atol=1e-5), "the update does not split into signal + noise"
                a["sig"] += d_sig.abs().sum().item()
                a["noi"] += d_noi.abs().sum().item()
    y = torch.stack(ys, 1)
    right = (task.logits(y) > 0).float() == batch.target  # B x trials
    present = batch.target.bool()
    out, rate = {}, spikes
    for n in names:
        a, h_max = acc[n], spec.projection(n).h_max
        M = torch.stack(a["M"], 1).reshape(B, c.trials, task.trial_steps)
        m_fb = M[:, :, fb0:].mean(-1)  # B x trials
        H = getattr(state, n).H
        rows = None
        if n == "input":
            mass = H.abs().sum(dim=(0, 2))
            rows = tuple((mass[task.channels(g)].sum() / mass.sum()).item() for g in ("cue", "marker", "feedback"))
        share = a["noi"] / (a["sig"] + a["noi"]) if a["sig"] + a["noi"] > 0 else None
        out[n] = Probe(
            m_present=m_fb[present].mean().item(),
            m_absent=m_fb[~present].mean().item(),
            m_right=m_fb[right].mean().item() if right.any() else math.nan,
            m_wrong=m_fb[~right].mean().item() if (~right).any() else math.nan,
            m_sd_out=M[:, :, :fb0].std().item(),
            gain_mod=a["gm"],
            gain_const=a["gc"],
            h_trials=(a["H"][0], a["H"][len(a["H"]) // 2 - 1], a["H"][-1]),
            clip=(H.abs() >= h_max * (1 - 1e-6)).float().mean().item(),
            noise_share=share if n == "input" else None,
            rows=rows,
            rate=rate,
        )
    return out


PROBE_HEAD = (
    "| trained / measured | proj | rate | M fb+ | M fb- | M ok | M wrong | M sd out | sep | size aM / b "
    "| mean abs H t1 / t6 / t12 | clip | noise share | H rows cue / mk / fb |"
)


def probe_row(label: str, n: str, p: Probe) -> str:
    sep = (p.m_present - p.m_absent) / p.m_sd_out if p.m_sd_out > 0 else math.nan
    share = f"{p.noise_share:.2f}" if p.noise_share is not None else "-"
    rows = " / ".join(f"{r:.2f}" for r in p.rows) if p.rows is not None else "-"
    return (
        f"| {label} | {n} | {p.rate:.3f} | {p.m_present:+.3f} | {p.m_absent:+.3f} "
        f"| {p.m_right:+.3f} | {p.m_wrong:+.3f} | {p.m_sd_out:.3f} | {sep:+.2f} "
        f"| {p.gain_mod:.4f} / {p.gain_const:.4f} "
        f"| {' / '.join(f'{h:.3f}' for h in p.h_trials)} | {p.clip:.3f} | {share} | {rows} |"
    )


def probe_table(args: argparse.Namespace, network: str) -> list[str]:
    cases = [("nowhere", m) for m in ("nowhere", "cue", "feedback", "everywhere")]
    cases += [("everywhere", "everywhere"), ("everywhere", "nowhere")]
    lines = [f"**{network}**: probes on {args.probe_episodes} test episodes", "", PROBE_HEAD, "|---" * 14 + "|"]
    clean_task = make_task(config(network, "nowhere", args.noise).task)
    for trained, measured in cases:
        with locked(args.lock):
            net, _ = load(args.out, network, trained, args.noise)
            task = make_task(config(network, measured, args.noise).task)
            probes = probe(net, task, clean_task, args.probe_episodes, TEST_SEED)
        lines += [probe_row(f"{trained} / {measured}", n, p) for n, p in probes.items()]
    return lines


def with_noise(task_cfg: Any, noise: float, groups: Optional[list[str]]) -> Any:
    """A task built from ``task_cfg`` with ``noise`` on the channel groups ``groups`` (none: clean)."""
    if groups is None:
        return make_task(task_cfg.model_copy(update={"noise": 0.0}))
    return make_task(task_cfg.model_copy(update={"noise": noise, "noise_on": list(groups)}))


def weights_tables(args: argparse.Namespace, name: str, path: str) -> list[str]:
    """A network trained elsewhere, measured under every condition and noise level, then probed."""
    cfg, _, net = load_weights(path)
    net.eval()
    conds = list(CONDITIONS)
    lines = [
        f"**{name}** (`{path}`, trained at noise {cfg.task.noise:g}): measured on {args.episodes} fresh"
        f" episodes (seed {TEST_SEED}); chance 0.5",
        "",
        *columns([""], conds),
    ]
    tasks = {c: with_noise(cfg.task, args.noise, CONDITIONS[c]) for c in conds}
    with locked(args.lock):
        lines.append(
            f"| {name} | " + " | ".join(cell(*accuracy(net, tasks[c], args.episodes, TEST_SEED)) for c in conds) + " |"
        )
        lines.append(
            "| *observer* | "
            + " | ".join(cell(*observer_accuracy(tasks[c], args.episodes, TEST_SEED)) for c in conds)
            + " |"
        )
        lines += ["", "| noise everywhere | network | observer |", "|---|---|---|"]
        for q in (0.0, 0.1, 0.2, 0.3):
            task = with_noise(cfg.task, q, CONDITIONS["everywhere"])
            net_acc = cell(*accuracy(net, task, args.episodes, TEST_SEED))
            lines.append(f"| {q:g} | {net_acc} | {cell(*observer_accuracy(task, args.episodes, TEST_SEED))} |")
        clean = tasks["nowhere"]
        probed = {m: probe(net, tasks[m], clean, args.probe_episodes, TEST_SEED) for m in ("nowhere", "everywhere")}
    lines += ["", f"probes on {args.probe_episodes} test episodes", "", PROBE_HEAD, "|---" * 14 + "|"]
    for measured, probes in probed.items():
        lines += [probe_row(f"{name} / {measured}", n, p) for n, p in probes.items()]
    return lines


def observer_table(args: argparse.Namespace) -> list[str]:
    """The observer over noise levels (every channel), on the hand-picked config's task."""
    lines = [f"observer, {args.observer_episodes} episodes (seed {TEST_SEED}), noise on every channel", ""]
    lines += ["| noise | accuracy ± se |", "|---|---|"]
    for q in (0.0, 0.1, 0.2, 0.3):
        task = make_task(config("handpicked", "everywhere", q).task)
        lines.append(f"| {q:g} | {cell(*observer_accuracy(task, args.observer_episodes, TEST_SEED))} |")
    return lines


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=3.0, help="CPU-minutes of training per network and condition")
    ap.add_argument("--noise", type=float, default=0.2)
    ap.add_argument("--episodes", type=int, default=512, help="fresh test episodes per measurement")
    ap.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/noise_diagnosis")
    ap.add_argument("--probe-episodes", type=int, default=256)
    ap.add_argument("--observer-episodes", type=int, default=1000)
    ap.add_argument("--lock", default=None, help="flock this file around each heavy piece")
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--continued", action="store_true", help="also train and measure the runs of CONTINUATIONS")
    ap.add_argument("--train-only", action="store_true")
    ap.add_argument("--weights", action="append", default=[], metavar="NAME=PATH", help="measure a trained network")
    ap.add_argument("--train-one", nargs=2, metavar=("NETWORK", "CONDITION"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.weights:
        t0 = time.process_time()
        lines = []
        for item in args.weights:
            name, _, path = item.partition("=")
            lines += [*weights_tables(args, name, path), ""]
        lines.append(f"(measurement: {(time.process_time() - t0) / 60:.2f} CPU-min)")
        text = "\n".join(lines)
        print(text)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "summary_weights.md").write_text(text + "\n")
        return
    if args.train_one:
        train_one(*args.train_one, args.noise, args.minutes, args.out)
        return
    train_all(args)
    if args.train_only:
        return
    t0 = time.process_time()
    lines = observer_table(args)
    for network in args.networks:
        lines += ["", *accuracy_table(args, network), "", *probe_table(args, network)]
    lines += ["", f"(measurement: {(time.process_time() - t0) / 60:.2f} CPU-min)"]
    text = "\n".join(lines)
    print(text)
    (args.out / f"summary_{'_'.join(args.networks)}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
