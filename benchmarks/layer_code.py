"""A network's hidden code of cue association's cues, read by the ideal readers of
``benchmarks/ideal_readers.py``: untrained (a config and its overrides, the network as built with
``--net-seed``) or trained (``--weights``).

The code is the hidden layer's spike counts per trial over the steps the pair is shown before the
feedback, its plasticity running as in training; with ``network.share_positions`` the pools'
counts are summed (what the readout reads).  The readers' constants are chosen on ``--episodes``
episodes of one seed and measured on as many of another (± standard error); the firing rate is
spikes per unit (of a pool) and step over those steps.

    python benchmarks/layer_code.py --config configs/cue_association_noisy.yaml \\
        --set network.share_positions=true --set network.centre_input=true --set network.winners=2 \\
        --set plasticity.input.rule=oja --set plasticity.input.modulation=plain \\
        --set plasticity.input.normalise=true --set plasticity.input.alpha_init=4.0 \\
        --variant "" --variant network.pools_read_shared=false        # about 1 CPU-minute a variant
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ideal_readers import (  # noqa: E402
    SELECT_SEED,
    TEST_SEED,
    Readings,
    best_readers,
    network_code,
    readings,
)
from hybridopt.config import load_config, network_spec  # noqa: E402
from hybridopt.snn.network import PlasticSNN  # noqa: E402
from hybridopt.tasks import make_task  # noqa: E402
from hybridopt.train.weights import load_weights  # noqa: E402


def pooled_code(r: Readings, task, net: PlasticSNN) -> np.ndarray:
    """``E x trials x hidden``: :func:`~benchmarks.ideal_readers.network_code` with the pools summed."""
    z, _ = network_code(r, task, net)
    return z.reshape(*z.shape[:2], net.spec.n_positions, -1).sum(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/cue_association_noisy.yaml")
    ap.add_argument("--set", action="append", default=[], help="KEY.PATH=VALUE, for every variant")
    ap.add_argument("--variant", action="append", default=None, help="';'-separated overrides: one row each")
    ap.add_argument("--weights", default=None, help="a trained network's weights.pt instead of a config")
    ap.add_argument("--episodes", type=int, default=300)
    ap.add_argument("--net-seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("| network | firing rate | Hebbian reader | delta reader |\n|---|---|---|---|")
    for variant in [None] if args.weights else args.variant or [""]:
        if args.weights:
            cfg, task, net = load_weights(args.weights)
            name = args.weights
        else:
            extra = [e for e in variant.split(";") if e]
            cfg = load_config(args.config, [*args.set, "network.kernel=reference", *extra])
            task = make_task(cfg.task)
            net = PlasticSNN(network_spec(cfg, task.n_in, task.n_out), seed=args.net_seed)
            name = "untrained" + (f", {', '.join(extra)}" if extra else "")
        sel, test = readings(task, args.episodes, SELECT_SEED), readings(task, args.episodes, TEST_SEED)
        zs = pooled_code(sel, task, net)
        b = best_readers(zs, sel, pooled_code(test, task, net), test)
        rate = zs.mean() / task.reading_steps / net.spec.n_positions
        cells = " | ".join(f"{b[k][0]:.3f} ± {b[k][1]:.3f}" for k in ("hebbian", "delta"))
        print(f"| {name} | {rate:.4f} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
