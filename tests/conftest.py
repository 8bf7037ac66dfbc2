"""Shared helpers: the repository root, a way to run the real CLI in a subprocess, and the
registered families and modes the generic tests run over."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import tests.extra_family  # noqa: F401  (a family registered as a user would: every generic test runs it)
from hybridopt.snn.plasticity import MODES, RULES

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

# What the generic tests run over: every registered family and mode, read from the registries.
FAMILIES = [r for r in RULES if r != "none"]
MODULATIONS = list(MODES)


def run_cli(args: list[str], cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m hybridopt ARGS`` in ``cwd``; returns the completed process."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    full_env.pop("MLFLOW_TRACKING_URI", None)
    full_env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "hybridopt", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def store(tmp_path: Path) -> str:
    """A fresh SQLite tracking URI inside the test's temporary directory."""
    return f"sqlite:///{tmp_path / 'm.db'}"
