"""The tracking store at the edge: parallel processes on one fresh SQLite store."""

from __future__ import annotations

import subprocess
import sys

from mlflow.tracking import MlflowClient

OPEN_AND_LOG = """
import sys
from hybridopt.tracking import Tracker
t = Tracker(sys.argv[1], "parallel")
run = t.start_run("seed", "train", params={"seed": sys.argv[2]})
t.log_metrics(run, {"fitness": float(sys.argv[2])})
t.end_run(run)
"""


def test_parallel_processes_on_a_fresh_sqlite_store_all_log(tmp_path):
    # Several runs started at once on a store that does not exist yet: each creates (or finds)
    # the schema and the experiment; without serialising that, some fail with a schema race.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = [
        subprocess.Popen([sys.executable, "-c", OPEN_AND_LOG, uri, str(i)], stderr=subprocess.PIPE, text=True)
        for i in range(4)
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(e[-500:] for e in errors)
    client = MlflowClient(tracking_uri=uri)
    exps = [e for e in client.search_experiments() if e.name == "parallel"]
    assert len(exps) == 1
    runs = client.search_runs([exps[0].experiment_id])
    assert sorted(r.data.metrics["fitness"] for r in runs) == [0.0, 1.0, 2.0, 3.0]
