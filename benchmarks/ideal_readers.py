"""How far a linear read-out of cue association's input spikes can go, by how it learns within an
episode (gated by the feedback, Hebbian, or by the error of its own answer, a delta rule) and by
the code it reads (the raw counts, a code built by competition within the episode, or the cues
grouped as the observer groups them).

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

The same two rules then read two codes of the cues instead of the raw counts, each bank coded
apart and the two codes summed:

- *competitive*: ``units`` units (the network's hidden size) with random unit-length prototypes
  ``p_u``; a bank's centred, unit-length reading ``v`` activates them by ``p_u . v``, the most
  active one wins (its code is 1, the others' 0), and the winner moves toward the reading, ``p_u
  <- normalise(p_u + lam (v - p_u))`` (an instar: Oja's rule for a unit that spikes or not).
  This is a code a hidden layer can build within an episode with input plasticity and
  competition between its units (``lam`` is chosen as ``kappa`` is).
- *grouped*: the index of the cue pattern the observer assigns the reading to
  (:class:`~hybridopt.tasks.cue_association.CueGrouper`), one-hot: the best code a reader can
  have, short of the observer's inference over the feedback.

With ``--weights``, a trained network's own code is read the same way (its hidden layer's spike
counts over those steps, its plasticity running), beside the network's own accuracy on the same
episodes: how much of what a reader needs its hidden layer provides.

    python benchmarks/ideal_readers.py                 # about 3 CPU-minutes
    python benchmarks/ideal_readers.py --noise 0.2 --weights mlruns/<exp>/<run>/artifacts/weights.pt
"""

from __future__ import annotations

import argparse
import itertools
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from hybridopt.config import load_config
from hybridopt.tasks import make_task
from hybridopt.tasks.base import Batch, observer_accuracy
from hybridopt.tasks.cue_association import CueGrouper
from hybridopt.train.weights import load_weights

ROOT = Path(__file__).resolve().parents[1]
SELECT_SEED, TEST_SEED = 7_100_001, 7_100_002
KAPPAS = (0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0)
THETAS = tuple(float(t) for t in np.round(np.linspace(-0.6, 0.3, 19), 3))
ETAS = (0.5, 1.0, 2.0, 4.0, 8.0)
LAMS = (0.3, 0.5, 0.8)


class Readings(NamedTuple):
    """Per episode and trial: each bank's spikes per channel per step over the steps its cue is
    shown before the feedback (``E x trials x 2 x bits``), the feedback (+1 yes, -1 no, 0
    unreadable) and the target."""

    fractions: np.ndarray
    feedback: np.ndarray
    target: np.ndarray
    batch: Batch


def readings(task, episodes: int, seed: int) -> Readings:
    c = task.cfg
    batch = task.batch(episodes, torch.Generator().manual_seed(seed))
    x = batch.x.reshape(episodes, c.trials, task.trial_steps, task.n_in).numpy()
    W = task.reading_steps
    nb = c.cue_bits
    fractions = x[:, :, :W, : 2 * nb].sum(2).reshape(episodes, c.trials, 2, nb) / W
    fb = x[:, :, c.cue_steps + c.response_steps :, 2 * nb + 1 : 2 * nb + 3].sum(2)
    return Readings(fractions, np.sign(fb[..., 0] - fb[..., 1]), batch.target.numpy() > 0.5, batch)


def raw_code(r: Readings) -> np.ndarray:
    """The pair's bank-summed counts (``E x trials x bits``): a cue reads the same in either bank."""
    return r.fractions.sum(2)


def competitive_code(r: Readings, units: int, lam: float, seed: int) -> np.ndarray:
    """Each bank's winning unit, one-hot, summed over the banks (``E x trials x units``); the
    prototypes start at random per episode and the winner's moves toward its reading."""
    E, T, _, nb = r.fractions.shape
    P = np.random.default_rng(seed).standard_normal((E, units, nb))
    P /= np.linalg.norm(P, axis=2, keepdims=True)
    z = np.zeros((E, T, units))
    for t in range(T):
        for bank in range(2):
            v = r.fractions[:, t, bank] - r.fractions[:, t, bank].mean(1, keepdims=True)
            v /= np.linalg.norm(v, axis=1, keepdims=True) + 1e-12
            win = np.eye(units)[np.einsum("eub,eb->eu", P, v).argmax(1)]
            z[:, t] += win
            P += lam * win[:, :, None] * (v[:, None, :] - P)
            P /= np.linalg.norm(P, axis=2, keepdims=True)
    return z


@torch.no_grad()
def network_code(r: Readings, task, net) -> tuple[np.ndarray, tuple[float, float]]:
    """A trained network's own code: its hidden spike counts over the steps the pair is shown
    before the feedback, per trial (``E x trials x hidden``), its plasticity running as in
    training; and the network's own accuracy on these episodes (mean, standard error)."""
    c = task.cfg
    W = task.reading_steps
    codes, fits = [], []
    for i in range(0, len(r.target), 256):
        x = r.batch.x[i : i + 256]
        y, s, _ = net(x)
        codes.append(s.reshape(len(x), c.trials, task.trial_steps, -1)[:, :, :W].sum(2).numpy())
        fits.append(task.fitness(y, Batch(x, r.batch.target[i : i + 256])).double().numpy())
    f = np.concatenate(fits)
    return np.concatenate(codes), (float(f.mean()), float(f.std() / math.sqrt(len(f))))


def grouped_code(r: Readings, task) -> np.ndarray:
    """Each bank's cue pattern as the observer groups them, one-hot, summed (``E x trials x n_cues``)."""
    c = task.cfg
    E, T, _, nb = r.fractions.shape
    reader = task.bit_reader()
    z = np.zeros((E, T, c.n_cues))
    for e in range(E):
        grouper = CueGrouper(c.n_cues, reader, nb)
        for t in range(T):
            for idx in grouper.assign(r.fractions[e, t]):
                z[e, t, idx] += 1.0
    return z


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


def best_readers(zs: np.ndarray, sel: Readings, zt: np.ndarray, test: Readings) -> dict[str, tuple]:
    """Both readers on one code: constants chosen on ``zs`` (standardised with its statistics),
    scored on ``zt``: ``{"hebbian": (mean, se, (kappa, theta)), "delta": (mean, se, eta), "selection":
    the Hebbian reader's score on the selection episodes}``."""
    d = zs.shape[2]
    flat = zs.reshape(-1, d)
    mu, sd = flat.mean(0), flat.std(0) + 1e-12
    zs, zt = (zs - mu) / sd, (zt - mu) / sd
    scale = 1.0 / math.sqrt(d)  # a unit-size step for the delta rule
    on_sel = {k: score(hebbian(zs, sel.feedback, *k), sel.target)[0] for k in itertools.product(KAPPAS, THETAS)}
    kt = max(on_sel, key=on_sel.__getitem__)
    eta = max(ETAS, key=lambda e: score(delta(zs * scale, sel.feedback, e), sel.target)[0])
    return {
        "hebbian": (*score(hebbian(zt, test.feedback, *kt), test.target), kt),
        "delta": (*score(delta(zt * scale, test.feedback, eta), test.target), eta),
        "selection": on_sel[kt],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs/cue_association_noisy_search.yaml"))
    ap.add_argument("--episodes", type=int, default=2000)
    ap.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3])
    ap.add_argument("--units", type=int, default=None, help="competitive units (default: the config's network.hidden)")
    ap.add_argument("--weights", default=None, help="a trained network's weights.pt: its hidden code is read too")
    args = ap.parse_args()
    net = load_weights(args.weights)[2] if args.weights else None
    cfg0 = load_config(args.config)
    units = args.units or cfg0.network.hidden
    print(
        f"cue association ({args.config}), {args.episodes} episodes to choose the constants (seed"
        f" {SELECT_SEED}), {args.episodes} to measure (seed {TEST_SEED}); chance 0.5; competitive:"
        f" {units} units\n"
    )
    net_cols = " network: Hebbian | network: delta | the network itself |" if net is not None else ""
    print(
        "| noise | raw: Hebbian | raw: delta | competitive: Hebbian | competitive: delta | grouped: Hebbian |"
        f" grouped: delta |{net_cols} observer |"
    )
    print("|---" * (8 + (3 if net is not None else 0)) + "|")
    constants = []
    for q in args.noise:
        task = make_task(load_config(args.config, [f"task.noise={q}"]).task)
        sel, test = readings(task, args.episodes, SELECT_SEED), readings(task, args.episodes, TEST_SEED)
        raw = best_readers(raw_code(sel), sel, raw_code(test), test)
        by_lam = {
            lam: best_readers(
                competitive_code(sel, units, lam, SELECT_SEED), sel, competitive_code(test, units, lam, TEST_SEED), test
            )
            for lam in LAMS
        }
        lam = max(LAMS, key=lambda k: by_lam[k]["selection"])  # chosen on the selection episodes' Hebbian reader
        comp = by_lam[lam]
        grp = best_readers(grouped_code(sel, task), sel, grouped_code(test, task), test)
        obs = observer_accuracy(task, args.episodes, TEST_SEED)
        cells = [r[k] for r in (raw, comp, grp) for k in ("hebbian", "delta")]
        if net is not None:
            (zs, _), (zt, own) = network_code(sel, task, net), network_code(test, task, net)
            mine = best_readers(zs, sel, zt, test)
            cells += [mine["hebbian"], mine["delta"], (*own, None)]
        row = " | ".join(f"{m:.3f} ± {se:.3f}" for m, se, _ in cells)
        print(f"| {q:g} | {row} | {obs[0]:.3f} ± {obs[1]:.3f} |")
        constants.append((q, raw, comp, lam, grp))
    print("\nconstants chosen on the selection episodes (Hebbian: kappa, theta; delta: eta; competitive: lam)")
    for q, raw, comp, lam, grp in constants:
        print(
            f"noise {q:g}: raw {raw['hebbian'][2]}, {raw['delta'][2]}; competitive lam {lam},"
            f" {comp['hebbian'][2]}, {comp['delta'][2]}; grouped {grp['hebbian'][2]}, {grp['delta'][2]}"
        )


if __name__ == "__main__":
    main()
