"""How far a linear read-out of cue association's input spikes can go, by how it learns within an
episode: gated by the feedback (Hebbian) or by the error of its own answer (a delta rule).

No network and no training across episodes: each reader sees, per trial, the spike counts of the
two cue banks over the steps the pair is shown before the feedback (summed over the banks, so a
cue reads the same in either bank; standardised), answers with a linear score of them, and then
changes its weights from the trial's feedback (the sign of yes - no spikes over the feedback
window; a tie teaches nothing)::

    Hebbian:  w <- w + g_t z_t,  g_t = +1 (yes) or -kappa (no);  answer "yes" iff cos(w, z_t) > theta
    delta:    w <- w + eta (f_t - sigmoid(w . z_t)) z_t,  f_t in {0, 1};  answer "yes" iff w . z_t > 0

A feedback-gated Hebbian update is what a neuromodulated Hebbian read-out does with a modulator
that reads the feedback; an error-gated one is what it does when the modulator also reads the
network's own answer (``network.modulator_reads_output``) and the rule has a presynaptic term
(``abcd``'s ``B``).  Each reader's constants (``kappa``, ``theta``; ``eta``) are chosen on
``--episodes`` episodes of one seed and measured on as many of another (± standard error over
episodes); accuracy is the task's fitness, the second half of the trials.  The task's observer
(which groups the readings into cues and keeps the targets consistent with the feedback) is
measured beside them on the same episodes.

    python benchmarks/ideal_readers.py                 # about 1 CPU-minute
"""

from __future__ import annotations

import argparse
import itertools
import math
from pathlib import Path

import numpy as np
import torch

from hybridopt.config import load_config
from hybridopt.tasks import make_task
from hybridopt.tasks.base import observer_accuracy

ROOT = Path(__file__).resolve().parents[1]
SELECT_SEED, TEST_SEED = 7_100_001, 7_100_002
KAPPAS = (0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0)
THETAS = tuple(np.round(np.linspace(-0.6, 0.3, 19), 3))
ETAS = (0.5, 1.0, 2.0, 4.0, 8.0)


def readings(task, episodes: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per episode and trial: the pair's bank-summed counts (``E x trials x bits``), the feedback
    (+1 yes, -1 no, 0 unreadable) and the target."""
    c = task.cfg
    batch = task.batch(episodes, torch.Generator().manual_seed(seed))
    x = batch.x.reshape(episodes, c.trials, task.trial_steps, task.n_in).numpy()
    W = c.cue_steps + c.response_steps if c.hold_cue else c.cue_steps
    nb = c.cue_bits
    counts = x[:, :, :W, : 2 * nb].sum(2)
    fb = x[:, :, c.cue_steps + c.response_steps :, 2 * nb + 1 : 2 * nb + 3].sum(2)
    return counts[..., :nb] + counts[..., nb:], np.sign(fb[..., 0] - fb[..., 1]), batch.target.numpy() > 0.5


def hebbian(z: np.ndarray, f: np.ndarray, kappa: float, theta: float) -> np.ndarray:
    """Right (1) or wrong (0) per episode and trial of the second half."""
    E, T, _ = z.shape
    w = np.zeros((E, z.shape[2]))
    right = []
    for t in range(T):
        cos = (w * z[:, t]).sum(1) / (np.linalg.norm(w, axis=1) * np.linalg.norm(z[:, t], axis=1) + 1e-12)
        right.append(cos > theta)
        w += np.where(f[:, t] > 0, 1.0, np.where(f[:, t] < 0, -kappa, 0.0))[:, None] * z[:, t]
    return np.stack(right, 1)[:, T // 2 :]


def delta(z: np.ndarray, f: np.ndarray, eta: float) -> np.ndarray:
    E, T, _ = z.shape
    w = np.zeros((E, z.shape[2]))
    right = []
    for t in range(T):
        score = (w * z[:, t]).sum(1)
        right.append(score > 0)
        err = np.where(f[:, t] != 0, (f[:, t] > 0) - 1.0 / (1.0 + np.exp(-score)), 0.0)
        w += eta * err[:, None] * z[:, t]
    return np.stack(right, 1)[:, T // 2 :]


def score(answers: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Mean fitness and its standard error over episodes."""
    per = (answers == target[:, target.shape[1] // 2 :]).mean(1)
    return float(per.mean()), float(per.std() / math.sqrt(len(per)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs/cue_association_noisy_search.yaml"))
    ap.add_argument("--episodes", type=int, default=2000)
    ap.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3])
    args = ap.parse_args()
    print(
        f"cue association ({args.config}), {args.episodes} episodes to choose the constants (seed"
        f" {SELECT_SEED}), {args.episodes} to measure (seed {TEST_SEED}); chance 0.5\n"
    )
    print("| noise | Hebbian (feedback-gated) | kappa, theta | delta (error-gated) | eta | observer |")
    print("|---|---|---|---|---|---|")
    for q in args.noise:
        task = make_task(load_config(args.config, [f"task.noise={q}"]).task)
        (zs, fs, ts), (zt, ft, tt) = (
            readings(task, args.episodes, SELECT_SEED),
            readings(task, args.episodes, TEST_SEED),
        )
        mu, sd = zs.reshape(-1, zs.shape[2]).mean(0), zs.reshape(-1, zs.shape[2]).std(0) + 1e-12
        zs, zt = (zs - mu) / sd, (zt - mu) / sd
        scale = 1.0 / math.sqrt(zs.shape[2])  # a unit-size step for the delta rule
        kappa, theta = max(itertools.product(KAPPAS, THETAS), key=lambda kt: score(hebbian(zs, fs, *kt), ts)[0])
        eta = max(ETAS, key=lambda e: score(delta(zs * scale, fs, e), ts)[0])
        h, d = score(hebbian(zt, ft, kappa, theta), tt), score(delta(zt * scale, ft, eta), tt)
        obs = observer_accuracy(task, args.episodes, TEST_SEED)
        print(
            f"| {q:g} | {h[0]:.3f} ± {h[1]:.3f} | {kappa:g}, {theta:g} | {d[0]:.3f} ± {d[1]:.3f} | {eta:g} |"
            f" {obs[0]:.3f} ± {obs[1]:.3f} |"
        )


if __name__ == "__main__":
    main()
