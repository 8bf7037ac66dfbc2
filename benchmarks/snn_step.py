"""Cost of plasticity: ms per sequence forward + backward, static network vs each rule family.

Runs a ``B x T`` batch of Poisson input spikes through :class:`PlasticSNN` and back-propagates
a scalar loss.  Rows: the static network, then each rule family (plain mode) on the recurrent
projection and on the input projection.  Every row is timed in the same run, interleaved
round-robin (so drift hits all rows alike) after a warm-up, and reported as the median over
the repeats together with its ratio to the static row.

    python -m benchmarks.snn_step                 # B=32, N=64, T=100, 1 thread (from the repo root)
    python -m benchmarks.snn_step --threads 4 --repeats 9
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hybridopt.snn.network import NetworkSpec, PlasticSNN, ProjectionSpec

FAMILIES = ("hebbian", "oja", "bcm", "stdp")


def configurations(n_in: int, n_hidden: int, n_out: int) -> dict[str, NetworkSpec]:
    """Row label -> network spec: static, then each family on the recurrent and on the input projection."""
    base = dict(n_in=n_in, hidden=n_hidden, n_out=n_out, input_gain=2.0, recurrent_gain=1.0)
    rows = {"static": NetworkSpec(**base)}
    for rule in FAMILIES:
        for projection in ("recurrent", "input"):
            rows[f"{rule} @ {projection}"] = NetworkSpec(**base, **{projection: ProjectionSpec(rule=rule)})
    return rows


def time_once(net: PlasticSNN, x: torch.Tensor) -> tuple[float, float]:
    """One forward + backward over the whole sequence; returns (seconds, hidden spike rate)."""
    net.zero_grad(set_to_none=True)
    start = time.perf_counter()
    y, s, _ = net(x)
    y.square().mean().backward()
    return time.perf_counter() - start, s.mean().item()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--inputs", type=int, default=32, help="input channels (Poisson spikes)")
    parser.add_argument("--outputs", type=int, default=4)
    parser.add_argument("--rate", type=float, default=0.2, help="input spike probability per step")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    x = (torch.rand(args.batch, args.steps, args.inputs, generator=gen) < args.rate).float()
    nets = {
        label: PlasticSNN(spec, seed=args.seed)
        for label, spec in configurations(args.inputs, args.hidden, args.outputs).items()
    }

    print(
        f"PlasticSNN forward+backward, B={args.batch} N={args.hidden} T={args.steps} "
        f"inputs={args.inputs} (p={args.rate}) outputs={args.outputs}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), median of {args.repeats} after {args.warmup} warm-up"
    )
    for _ in range(args.warmup):
        for net in nets.values():
            time_once(net, x)
    times: dict[str, list[float]] = {label: [] for label in nets}
    rates: dict[str, float] = {}
    for _ in range(args.repeats):
        for label, net in nets.items():
            seconds, rates[label] = time_once(net, x)
            times[label].append(seconds)

    static_ms = 1e3 * statistics.median(times["static"])
    header = (
        f"{'config':<20} {'ms/batch':>9} {'min':>8} {'max':>8} {'ms/sample':>10} {'x static':>9} {'spike rate':>11}"
    )
    print(header)
    print("-" * len(header))
    for label, ts in times.items():
        ms = 1e3 * statistics.median(ts)
        print(
            f"{label:<20} {ms:9.1f} {1e3 * min(ts):8.1f} {1e3 * max(ts):8.1f} {ms / args.batch:10.3f} "
            f"{ms / static_ms:9.2f} {rates[label]:11.3f}"
        )
    print("ms/batch: median time for one forward + backward over the whole B x T batch (min/max over repeats);")
    print("ms/sample = ms/batch / B; x static = ratio to the static row of this run; plastic rows use plain mode.")


if __name__ == "__main__":
    main()
