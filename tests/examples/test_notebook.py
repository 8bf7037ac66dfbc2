"""The notebook a user opens first (``examples/first_search.ipynb``) runs top to bottom: no cell
raises, and every figure cell (tagged ``figure``) shows an image."""

from __future__ import annotations

import nbclient  # the test extra brings nbclient, nbformat and ipykernel
import nbformat
import pytest

from tests.conftest import REPO
from tests.search.conftest import ray_tmp  # noqa: F401  (a private Ray temp dir, its processes killed after)

NOTEBOOK = REPO / "examples" / "first_search.ipynb"


def test_the_first_notebook_runs_and_draws_every_figure(
    monkeypatch: pytest.MonkeyPatch,
    ray_tmp: str,  # noqa: F811  (the fixture imported above)
):
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the kernel is a child process: it imports this checkout
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    for var in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "HYBRIDOPT_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code")  # stored without outputs
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()  # raises CellExecutionError, naming the cell, where one fails
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(o.get("output_type") != "error" for c in code for o in c.outputs)
    figures = [c for c in code if "figure" in c.metadata.get("tags", [])]
    assert len(figures) == 4
    for cell in figures:
        assert any("image/png" in o.get("data", {}) for o in cell.outputs), cell.source[:80]
    table = next(c for c in code if "result.candidates()" in c.source)
    assert any("text/html" in o.get("data", {}) for o in table.outputs)  # the candidates as a table
