"""Fixtures of the end-to-end search tests: a private Ray temp dir, and one uninterrupted
three-generation smoke search that several tests read."""

from __future__ import annotations

import shutil
import subprocess
import tempfile

import pytest

from tests.search.searching import SMOKE, THREE_GENERATIONS, search


@pytest.fixture
def ray_tmp():
    """A private Ray temp dir; every process started under it is killed at teardown."""
    d = tempfile.mkdtemp(prefix="hr", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    yield d
    subprocess.run(["pkill", "-9", "-f", d], check=False)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """One uninterrupted three-generation smoke search (read by several test files)."""
    d = tmp_path_factory.mktemp("reference")
    rt = tempfile.mkdtemp(prefix="hr", dir="/tmp")
    try:
        store = f"sqlite:///{d / 'm.db'}"
        p = search([SMOKE, *THREE_GENERATIONS, "--tracking-uri", store], d, rt)
        assert p.returncode == 0, p.stderr
    finally:
        subprocess.run(["pkill", "-9", "-f", rt], check=False)
        shutil.rmtree(rt, ignore_errors=True)
    (d / "stdout.txt").write_text(p.stdout)
    return d, store
