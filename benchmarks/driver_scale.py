"""How many workers one search driver keeps busy: the real driver on simulated workers.

The real :class:`~hybridopt.search.driver.Driver` (the GA, successive halving, inheritance, the
standings, checkpoints and the MLflow record, to a SQLite store or to an ``mlflow server`` on
loopback) runs a search whose Ray pool is replaced by :class:`SimulatedPool`: ``N`` workers on
a simulated clock, each candidate costing 3 CPU-minutes over its rungs (rung ``k`` trains its
share of them), each result a candidate's curves and a trained state of its network's real
shapes, so the driver's inheritance and record do their real work.

The clock is the driver's own: it advances by the simulated training while the driver waits
for a result, and by the CPU seconds the driver spends between two calls to the pool, during
which finished workers stay idle (the pool's own bookkeeping is left out of both).  So

* **driver CPU per candidate**: the driver's CPU seconds over the search / candidates;
* **driver load**: those CPU seconds / the simulated duration of the search (cores); with
  ``--store server``, the server's CPU seconds likewise, apart;
* **store writes per candidate**: calls to MLflow's client that write (``create_run``,
  ``log_batch``, ``set_terminated``, ``log_artifact``, ...) / candidates;
* **utilisation**: the workers' busy share, training seconds / (``N`` x duration): a worker
  waiting for a rung or a generation to end, or for the driver, is idle.

For each ``N`` the population is ``--per-worker`` times ``N`` (a generational search with
halving needs several candidates a worker to keep them busy through a generation's tail).  The
driver saturates at the first ``N`` whose load is above half a core or whose utilisation is
below 90 %.

    python -m benchmarks.driver_scale                         # N = 8, 64, 512, 4096, SQLite
    python -m benchmarks.driver_scale --workers 8 64 --per-worker 2 4 8
    python -m benchmarks.driver_scale --store server          # an mlflow server on loopback
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import heapq
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Hashable
from pathlib import Path
from typing import Any, Optional

from hybridopt.config import Config, load_config, parse_config
from hybridopt.search.driver import Driver
from hybridopt.search.halving import Taken
from hybridopt.tracking import Tracker
from hybridopt.train import TrainResult, TrainState, initial_model

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "smoke_search.yaml"
CANDIDATE_S = 180.0  # a candidate's full budget: 3 CPU-minutes
STEPS = 40  # its training steps (the rungs 0.25, 0.5, 1.0 train 10, 10 and 20)
EVAL_EVERY = 5
WRITES = ("create_run", "log_batch", "log_param", "log_metric", "set_tag", "set_terminated", "update_run")
WRITES += ("log_artifact", "log_artifacts", "delete_run", "create_experiment")


class SimulatedPool:
    """``workers`` workers on a simulated clock (seconds), first come first served."""

    def __init__(self, workers: int, full_steps: int):
        self.workers, self.full_steps = workers, full_steps
        self.now = 0.0
        self.busy_s = 0.0  # worker-seconds spent training
        self.own_cpu = 0.0  # CPU seconds of this pool's bookkeeping (not the driver's)
        self.free = workers
        self.queue: collections.deque[tuple[Hashable, dict[str, Any], Optional[TrainState], float]] = (
            collections.deque()
        )
        self.events: list[tuple[float, int, Hashable, TrainResult]] = []  # (done at, seq, key, result)
        self._taken: list[Taken] = []
        self._seq = 0
        self._models: dict[str, dict[str, Any]] = {}
        self._mark = time.process_time()

    # the driver's time between calls moves the clock; the pool's own time does not
    def _enter(self) -> None:
        cpu = time.process_time()
        self.now += cpu - self._mark
        self._mark = cpu

    def _leave(self, entered: float) -> None:
        cpu = time.process_time()
        self.own_cpu += cpu - entered
        self._mark = cpu

    @property
    def pending(self) -> int:
        return len(self.queue) + len(self.events)

    def submit(self, key: Hashable, config: dict[str, Any], start: Optional[TrainState], cpu_budget_s) -> None:
        self._enter()
        entered = time.process_time()
        self.queue.append((key, config, start, self.now))
        self._dispatch()
        self._leave(entered)

    def taken(self) -> list[Taken]:
        out, self._taken = self._taken, []
        return out

    def next_result(self) -> tuple[Hashable, TrainResult]:
        self._enter()
        entered = time.process_time()
        done_at, _, key, result = heapq.heappop(self.events)
        self.now = max(self.now, done_at)  # the driver waits for it, or it was waiting for the driver
        self.free += 1
        self._dispatch()
        self._leave(entered)
        return key, result

    def close(self) -> None:
        self.queue.clear()
        self.events.clear()

    def _dispatch(self) -> None:
        while self.free and self.queue:
            key, config, start, queued = self.queue.popleft()
            self.free -= 1
            self._taken.append(Taken(key, self.now, self.now - queued))
            steps = int(config["train"]["steps"])
            duration = CANDIDATE_S * steps / self.full_steps
            self.busy_s += duration
            self._seq += 1
            result = self._result(config, start, steps, duration)
            heapq.heappush(self.events, (self.now + duration, self._seq, key, result))

    def _result(self, config: dict[str, Any], start: Optional[TrainState], steps: int, cpu_s: float) -> TrainResult:
        """What a worker would return: a fitness that depends on the genome (and grows with
        training), curves at every step, a state of the network's own shapes."""
        if start is None:
            shape_key = json.dumps([config["network"], config["plasticity"]], sort_keys=True)
            if shape_key not in self._models:
                self._models[shape_key] = initial_model(parse_config(config))
            model, first, behind = self._models[shape_key], 0, 0.0
        else:
            model, first, behind = start.model, start.step, start.cpu_s
        lr = float(config["train"]["lr"])
        digest = hashlib.sha256(json.dumps(config["plasticity"], sort_keys=True).encode()).digest()
        skill = 0.5 - 0.05 * (math.log10(lr) + 2.0) ** 2 + digest[0] / 2550.0
        fitness = skill + 0.1 * (1.0 - math.exp(-(first + steps) / self.full_steps))
        history = []
        for s in range(first + 1, first + steps + 1):
            point = {"train/loss": 1.0 - fitness, "train/fitness": fitness}
            if s % EVAL_EVERY == 0:
                point.update({"eval/fitness": fitness, "eval/accuracy": fitness})
            history.append((s, point))
        final = {"test/accuracy": fitness, "test/accuracy_se": 0.01, "test/episodes": 64.0, "test/chance": 0.5}
        state = TrainState(model=model, step=first + steps, cpu_s=behind + cpu_s)
        return TrainResult(
            fitness=fitness,
            final_metrics=final,
            history=history,
            state_dict=model,
            wall_time=cpu_s,
            cpu_time=cpu_s,
            steps=first + steps,
            episodes=8 * (first + steps),
            state=state,
        )


class CountingClient:
    """MLflow's client, counting the calls that write to the store."""

    def __init__(self, client: Any):
        self._client = client
        self.writes: collections.Counter[str] = collections.Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name in WRITES:

            def counted(*args: Any, **kwargs: Any) -> Any:
                self.writes[name] += 1
                return attr(*args, **kwargs)

            return counted
        return attr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``mlflow server`` on loopback over a SQLite store in ``root``; its CPU seconds are read
    from /proc."""

    def __init__(self, root: Path):
        self.uri = f"http://127.0.0.1:{_free_port()}"
        port = self.uri.rsplit(":", 1)[1]
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
               "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", port,
               "--workers", "1"]  # fmt: skip
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.log = open(root / "server.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"mlflow server did not start: see {root / 'server.log'}")

    def cpu_s(self) -> float:
        """CPU seconds of the server's process group (utime + stime of each process)."""
        total = 0.0
        tick = os.sysconf("SC_CLK_TCK")
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[2]) == self.proc.pid:  # its process group
                    total += (int(fields[11]) + int(fields[12])) / tick
        return total

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=30)
        self.log.close()


def search_config(workers: int, per_worker: int, generations: int) -> Config:
    population = per_worker * workers
    return load_config(
        CONFIG,
        [
            f"search.population={population}",
            f"search.generations={generations}",
            f"search.elite={max(1, population // 8)}",
            f"train.steps={STEPS}",
            f"train.eval_every={EVAL_EVERY}",
        ],
    )


def measure(workers: int, per_worker: int, generations: int, store: str, root: Path) -> dict[str, float]:
    """One search on ``workers`` simulated workers; its figures."""
    cfg = search_config(workers, per_worker, generations)
    cfg = cfg.model_copy(update={"search": cfg.search.model_copy(update={"checkpoint": str(root / "ck.pt")})})
    server = Server(root) if store == "server" else None
    try:
        uri = server.uri if server else f"sqlite:///{root / 'm.db'}"
        tracker = Tracker(uri, f"scale-{workers}-{per_worker}")
        counting = CountingClient(tracker.client)
        tracker.client = counting  # type: ignore[assignment]
        pool = SimulatedPool(workers, STEPS)
        server_cpu = server.cpu_s() if server else 0.0
        cpu0 = time.process_time()
        Driver(cfg, tracker, resume=False, pool=pool).run()
        driver_cpu = time.process_time() - cpu0 - pool.own_cpu
        server_cpu = (server.cpu_s() - server_cpu) if server else 0.0
    finally:
        if server:
            server.stop()
    candidates = counting.writes["create_run"] - 1  # the parent is one
    return {
        "workers": workers,
        "population": per_worker * workers,
        "candidates": candidates,
        "driver_cpu_ms": 1000 * driver_cpu / candidates,
        "server_cpu_ms": 1000 * server_cpu / candidates,
        "writes": sum(counting.writes.values()) / candidates,
        "load": driver_cpu / pool.now,
        "server_load": server_cpu / pool.now,
        "utilisation": pool.busy_s / (workers * pool.now),
        "duration_s": pool.now,
    }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[8, 64, 512, 4096], help="N (default 8 64 512 4096)")
    parser.add_argument("--per-worker", type=int, nargs="+", default=[4], help="population / N (default 4)")
    parser.add_argument("--generations", type=int, default=2, help="generations of each search (default 2)")
    parser.add_argument("--store", choices=("sqlite", "server"), default="sqlite", help="the tracking store")
    args = parser.parse_args(argv)
    if min(args.workers) < 1 or min(args.per_worker) < 1 or args.generations < 1:
        parser.error("--workers, --per-worker and --generations must be at least 1")
    head = f"{'N':>6} {'pop':>7} {'cands':>7} {'driver ms/c':>11} {'server ms/c':>11} {'writes/c':>8} "
    head += f"{'driver':>6} {'server':>6} {'util':>6} {'sim s':>8}"
    print(f"{head}  ({args.store}, {args.generations} generation(s); driver, server: cores)", flush=True)
    saturated = None
    for n in args.workers:
        for m in args.per_worker:
            with tempfile.TemporaryDirectory(prefix="driver-scale-") as tmp:
                r = measure(n, m, args.generations, args.store, Path(tmp))
            print(
                f"{n:>6} {r['population']:>7} {r['candidates']:>7} {r['driver_cpu_ms']:>11.1f} "
                f"{r['server_cpu_ms']:>11.1f} {r['writes']:>8.1f} {r['load']:>6.2f} {r['server_load']:>6.2f} "
                f"{r['utilisation']:>6.1%} "
                f"{r['duration_s']:>8.0f}",
                flush=True,
            )
            if saturated is None and (r["load"] > 0.5 or r["utilisation"] < 0.9):
                saturated = (n, m, r)
    if saturated is None:
        print("the driver kept up at every N: load at most half a core, utilisation at least 90 %")
    else:
        n, m, r = saturated
        why = "load above half a core" if r["load"] > 0.5 else "utilisation below 90 %"
        print(f"first saturated: N = {n}, population {n * m}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
