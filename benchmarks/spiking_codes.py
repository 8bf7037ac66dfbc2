"""Which spiking hidden layers can build, within an episode, a code of cue association's cues that
the ideal readers of ``benchmarks/ideal_readers.py`` read better than the raw input counts.

No training across episodes: a layer of leaky integrate-and-fire units reads the cue banks' spikes
step by step over the steps the pair is shown before the feedback (each trial starts the layer at
rest: potentials, spikes and traces at 0; a network's layer would carry them over from the last
trial, and keep running through the feedback window), its prototypes start at random
and change within the episode by an instar, and the readers (feedback-gated Hebbian, and delta)
read its spike counts per trial, their constants chosen on one seed's episodes and measured on
another's (± standard error). Per step ``t`` and unit ``u`` of a pool fed by input ``x_t`` (the
spikes of its channels, centred: ``x_t - mean(x_t)``, what a feed-forward inhibition that counts
all the channels' spikes subtracts)::

    v_t = beta v_{t-1} (1 - s_{t-1}) + p_u . x_t
    s_t = H(v_t - max(theta, v_t^(k)))       (k winners per pool and step)
    xbar_t = lam_tr xbar_{t-1} + (1 - lam_tr) x_t                         (the presynaptic trace)

and the prototype ``p_u`` of a unit that spikes moves toward the trace, in one of three forms:

- *instar*: ``p_u <- normalise(p_u + lam s_u (xbar / |xbar| - p_u))``: all of the prototype is
  plastic and its length is fixed (Oja's rule for a unit that spikes or not);
- *additive*: ``p_u = w_u + alpha h_u``, ``h_u <- h_u + lam s_u (xbar - h_u)``: a fixed random
  weight plus a plastic term, the form of a plastic projection (``W + alpha H``);
- *normalised*: the same, each unit's weight normalised, ``p_u = (w_u + alpha h_u) / |w_u + alpha
  h_u|``: a plastic projection with weight normalisation.

(One row feeds the layer the spikes themselves, not centred.)

The rows above are upper figures for a network's layer.  ``--differences`` measures what the two
ways a network's layer differs cost, for the shared normalised layer (``alpha`` 4, and 0): *carried*,
the layer runs through every step of every trial (the feedback window too) and carries its
potentials, spikes and traces from one trial into the next, its code still counted over the steps
the pair is shown; *shared channels*, each pool also reads the channels the banks share (the
response marker and the two feedback channels, as they are), as a network's pools do unless
``network.pools_read_shared`` is false.

The pools, the question: how the layer meets the pair of cues, which arrive on two banks at once:

- *one pool*: one pool over both banks' channels (what a hidden layer over the whole input is);
- *a pool per bank*: each bank drives its own pool with its own prototypes;
- *a pool per bank, shared*: each bank drives its own pool, and the pools share their prototypes
  and their plastic state (a cue gets the same unit whichever bank shows it: a convolution over
  the banks); the code is the pools' counts summed.

For comparison the same readers read the raw counts (summed over the banks) and the count-based
competitive code of ``ideal_readers.py`` (one decision per bank and trial, ``lam`` 0.8).

    python benchmarks/spiking_codes.py                    # noise 0.2, about 15 CPU-minutes
    python benchmarks/spiking_codes.py --noise 0 0.3 --pools shared
    python benchmarks/spiking_codes.py --differences --episodes 300   # about 4 CPU-minutes
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ideal_readers import (  # noqa: E402
    SELECT_SEED,
    TEST_SEED,
    Readings,
    best_readers,
    competitive_code,
    raw_code,
    readings,
)
from hybridopt.config import load_config  # noqa: E402
from hybridopt.tasks import make_task  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class Layer(NamedTuple):
    """One spiking layer: how its pools meet the banks, the prototypes' form, its constants."""

    pools: str  # "one" | "per-bank" | "shared"
    form: str  # "instar" | "additive" | "normalised"
    units: int = 64
    winners: int = 1
    lam: float = 0.3
    alpha: float = 1.0
    trace: float = 0.8
    beta: float = 0.9
    theta: float = 1.0
    centre: bool = True  # the input less its mean over the channels, at every step
    carry: bool = False  # every step of every trial, the state carried from trial to trial
    shared_channels: bool = False  # each pool also reads the marker and feedback channels


LAYERS = (
    Layer("one", "instar", winners=2),
    Layer("one", "additive", winners=2, alpha=1.0),
    Layer("one", "additive", winners=2, alpha=0.0),
    Layer("per-bank", "instar"),
    Layer("per-bank", "additive", alpha=1.0),
    Layer("shared", "instar"),
    Layer("shared", "instar", lam=0.1),
    Layer("shared", "instar", winners=2),
    Layer("shared", "additive", alpha=1.0),
    Layer("shared", "additive", alpha=4.0),
    Layer("shared", "additive", alpha=0.0),
    Layer("shared", "normalised", alpha=1.0),
    Layer("shared", "normalised", alpha=4.0),
    Layer("shared", "normalised", alpha=4.0, centre=False),
)


# The rows of ``--differences``: the shared normalised layer as a network's layer differs from it.
DIFFERENCES = tuple(
    Layer("shared", "normalised", alpha=alpha, carry=carry, shared_channels=shared)
    for alpha in (4.0, 0.0)
    for carry in (False, True)
    for shared in (False, True)
)


def bank_spikes(r: Readings, task, steps: Optional[int] = None, shared_channels: bool = False) -> np.ndarray:
    """The cue banks' spikes over the first ``steps`` steps of each trial (default: the reading
    steps), ``E x trials x steps x banks x channels``; with ``shared_channels`` each bank's
    channels followed by the channels the banks share (the same in both)."""
    c = task.cfg
    steps = task.reading_steps if steps is None else steps
    x = r.batch.x.reshape(len(r.target), c.trials, task.trial_steps, task.n_in).numpy()[:, :, :steps]
    banks = x[..., : 2 * c.cue_bits].reshape(len(r.target), c.trials, steps, 2, c.cue_bits)
    if shared_channels:
        shared = np.repeat(x[:, :, :, None, 2 * c.cue_bits :], 2, 3)
        banks = np.concatenate([banks, shared], 4)
    return banks


def spiking_code(r: Readings, task, layer: Layer, seed: int) -> np.ndarray:
    """The layer's spike counts per trial (``E x trials x units``, or ``2 units`` for a pool per
    bank), its prototypes drawn with ``seed`` (the same for every episode: they are weights) and
    changed within each episode.  The pools run side by side, step by step; where they share
    their prototypes, a step's changes from both pools are summed."""
    x = bank_spikes(r, task, task.trial_steps if layer.carry else None, layer.shared_channels)
    E, trials, steps, banks, bits = x.shape
    n_bank = task.cfg.cue_bits  # a bank's own channels, centred; the shared ones read as they are
    if layer.pools == "one":
        x = x.reshape(E, trials, steps, 1, banks * bits)
    n_pools, d = x.shape[3], x.shape[4]
    share = 1 if layer.pools in ("one", "shared") else n_pools
    w = np.random.default_rng(seed).standard_normal((share, layer.units, d))
    w /= np.linalg.norm(w, axis=2, keepdims=True)
    w = np.repeat(w, n_pools // share, 0)  # the prototype each pool reads from
    p = np.repeat(w[None], E, 0)  # instar: the whole prototype, per episode
    h = np.zeros_like(p)  # additive and normalised: the plastic term
    z = np.zeros((E, trials, n_pools, layer.units))
    v = np.zeros((E, n_pools, layer.units))
    s = np.zeros((E, n_pools, layer.units), dtype=bool)
    xbar = np.zeros((E, n_pools, d))
    own = (np.arange(d) < n_bank) if layer.pools != "one" else np.ones(d, dtype=bool)
    for t in range(trials):
        if not layer.carry:  # each trial from rest
            v, s, xbar = np.zeros_like(v), np.zeros_like(s), np.zeros_like(xbar)
        for st in range(steps):
            xs = x[:, t, st] - x[:, t, st][..., own].mean(2, keepdims=True) * own if layer.centre else x[:, t, st]
            xbar = layer.trace * xbar + (1 - layer.trace) * xs
            if layer.form == "instar":
                proto = p
            else:
                proto = w[None] + layer.alpha * h
                if layer.form == "normalised":
                    proto = proto / (np.linalg.norm(proto, axis=3, keepdims=True) + 1e-12)
            v = layer.beta * v * (1.0 - s) + np.einsum("epud,epd->epu", proto, xs)
            kth = -np.sort(-v, axis=2)[:, :, layer.winners - 1 : layer.winners]
            s = (v > layer.theta) & (v >= kth)
            if st < task.reading_steps:  # the code: counts over the steps the pair is shown
                z[:, t] += s
            target = xbar / (np.linalg.norm(xbar, axis=2, keepdims=True) + 1e-12) if layer.form == "instar" else xbar
            step = layer.lam * s[..., None] * (target[:, :, None, :] - (p if layer.form == "instar" else h))
            if layer.pools == "shared":  # one plastic state: the pools' changes summed
                step = np.repeat(step.sum(1, keepdims=True), n_pools, 1)
            if layer.form == "instar":
                p += step
                p /= np.linalg.norm(p, axis=3, keepdims=True)
            else:
                h += step
    return z.sum(2) if layer.pools == "shared" else z.reshape(E, trials, n_pools * layer.units)


def describe(layer: Layer) -> str:
    pools = {"one": "one pool", "per-bank": "a pool per bank", "shared": "a pool per bank, shared"}[layer.pools]
    form = f"instar, lam {layer.lam:g}" if layer.form == "instar" else f"{layer.form}, alpha {layer.alpha:g}"
    how = ("" if layer.centre else ", input not centred") + (", carried" if layer.carry else "")
    how += ", reading the shared channels" if layer.shared_channels else ""
    return f"{pools}{how} | {form} | {layer.winners}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs/cue_association_noisy_search.yaml"))
    ap.add_argument("--episodes", type=int, default=1000)
    ap.add_argument("--noise", type=float, nargs="+", default=[0.2])
    ap.add_argument("--pools", nargs="+", choices=["one", "per-bank", "shared"], default=None, help="only these layers")
    ap.add_argument("--differences", action="store_true", help="the rows of a network's layer's differences only")
    args = ap.parse_args()
    print(
        f"cue association ({args.config}), {args.episodes} episodes to choose the readers' constants"
        f" (seed {SELECT_SEED}), {args.episodes} to measure (seed {TEST_SEED}); chance 0.5\n"
    )
    print("| noise | code | prototypes | winners per pool | Hebbian reader | delta reader |")
    print("|---|---|---|---|---|---|")
    for q in args.noise:
        task = make_task(load_config(args.config, [f"task.noise={q}"]).task)
        sel, test = readings(task, args.episodes, SELECT_SEED), readings(task, args.episodes, TEST_SEED)

        def row(name: str, zs: np.ndarray, zt: np.ndarray, q: float = q, sel=sel, test=test) -> None:
            b = best_readers(zs, sel, zt, test)
            cells = " | ".join(f"{b[k][0]:.3f} ± {b[k][1]:.3f}" for k in ("hebbian", "delta"))
            print(f"| {q:g} | {name} | {cells} |", flush=True)

        row("raw counts, summed over the banks | - | -", raw_code(sel), raw_code(test))
        row(
            "count-based competitive (one decision per bank and trial) | instar, lam 0.8 | 1",
            competitive_code(sel, 64, 0.8, SELECT_SEED),
            competitive_code(test, 64, 0.8, TEST_SEED),
        )
        for layer in DIFFERENCES if args.differences else LAYERS:
            if args.pools is not None and layer.pools not in args.pools:
                continue
            row(describe(layer), spiking_code(sel, task, layer, 1), spiking_code(test, task, layer, 1))


if __name__ == "__main__":
    main()
