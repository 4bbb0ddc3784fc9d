"""Shared fixtures: a private LHORCH_HOME per test, and one local Ray node for the whole session.

Runner tests share one local provider (LocalProvider keep=True: plain stages start no Ray, and a
head a test starts is kept for the next) and each test has its own store; any head is stopped at the
end, and the session fails if any Ray process is left behind.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
from moto_server import aws, moto_endpoint, stand_in_head  # noqa: F401  (fixtures for every test module)

from lhorch.orchestrator.state.store import Store
from lhorch.providers.local import LocalProvider


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("LHORCH_HOME", str(path))
    return path


@pytest.fixture
def store(home) -> Store:
    s = Store(home)
    yield s
    s.close()


@pytest.fixture
def write_pipeline(tmp_path):
    def write(text: str, name: str = "pipeline.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


def _ray_processes() -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,stat,args"], capture_output=True, text=True).stdout.splitlines()
    return [line for line in out if ("raylet" in line or "gcs_server" in line or "lhorch.providers.ray_head" in line)
            and " Z" not in line and "<defunct>" not in line]


@pytest.fixture(scope="session")
def ray_node(tmp_path_factory):
    """A local Ray head shared by the session's runner tests (2 CPUs)."""
    provider = LocalProvider(tmp_path_factory.mktemp("ray-home"), keep=True, cpus=2)
    yield provider
    provider.release(force=True)


@pytest.fixture(scope="session")
def remote_cluster(tmp_path_factory, moto_endpoint):  # noqa: F811
    """A second Ray cluster standing in for a cloud one (started with moto's endpoint in its
    environment, as a cloud node has its region's S3)."""
    provider = LocalProvider(tmp_path_factory.mktemp("remote-home"), keep=True, cpus=2)
    cluster = provider.start_head("stand-in", jobs_api=True)  # a Ray head with the Jobs API, as a cloud one
    yield cluster
    provider.release(force=True)


@pytest.fixture(scope="session", autouse=True)
def no_ray_left_behind():
    yield
    deadline = time.monotonic() + 15
    while _ray_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _ray_processes()
    assert not left, "Ray processes left running after the tests:\n" + "\n".join(left)


def pytest_configure(config):
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
