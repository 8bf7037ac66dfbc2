"""The cluster tests' shared fixture: another Ray on the machine, on Ray's default ports."""

from __future__ import annotations

import pytest

from tests.cluster.ray_ports import DefaultRay
from tests.cluster.test_launcher_e2e import _pidns_available, skip_unless_ci


@pytest.fixture(scope="session")
def default_ray():
    """A bare ``ray start --head`` (GCS 6379, dashboard 8265, dashboard agent 52365, ...) running
    beside the test heads for the whole session, as a developer's own Ray would; stopped at the end."""
    if not _pidns_available():
        skip_unless_ci("needs PID namespaces (unshare) to run a Ray that stops with everything it started")
    ray = DefaultRay()
    try:
        ray.wait_ready()
        yield ray
    finally:
        ray.stop()
