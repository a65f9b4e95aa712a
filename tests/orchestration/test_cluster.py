"""The search driver's connection to Ray: what a local Ray's workers inherit, and leaving Ray."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import ray

from tuner.orchestration import cluster

pytestmark = pytest.mark.slow  # starts a real local Ray


def worker_view() -> tuple[str | None, dict]:
    return os.environ.get("MLFLOW_TRACKING_URI"), dict(ray.get_runtime_context().runtime_env)


@pytest.fixture
def environment() -> Iterator[None]:
    """os.environ as it was, after the test: connecting sets variables for this process and its children."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_a_local_rays_workers_inherit_the_tracking_uri_without_a_runtime_env(environment):
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    connection = cluster.connect(None, tracking_uri="sqlite:///tracked.db", local=True)
    try:
        assert connection.owned
        uri, runtime_env = ray.get(ray.remote(num_cpus=0)(worker_view).remote())
        assert uri == "sqlite:///tracked.db"
        assert runtime_env == {}, "a runtime env makes every worker wait for Ray's runtime-env agent"
        joined = cluster.connect(None, tracking_uri="sqlite:///other.db", local=True)
        assert not joined.owned
        joined.close_in_background().join()
        assert ray.is_initialized(), "a connection the driver did not make must not stop Ray"
    finally:
        connection.close_in_background().join()
    assert not ray.is_initialized()
