"""The search on a real two-node Ray cluster started on this machine: `ray job submit`, and GPU packing.

Each node declares 1 CPU and 1 logical GPU (Ray schedules GPUs it is told about; the trials
themselves run on the CPU). The cluster uses token authentication, as Ray clusters do by
default, and is stopped at the end of the module, also on failure.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from mlflow import MlflowClient

from tests.helpers import BIN, free_port, mlflow_server, run_command
from tuner.presets import load_preset

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
NODE = ["--num-cpus", "1", "--num-gpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]


@dataclass(frozen=True)
class Cluster:
    address: str  # HOST:PORT of the head's GCS, for --address
    dashboard: str  # http://HOST:PORT of the Ray dashboard and Jobs API
    env: dict[str, str]  # what a user's shell needs: the virtualenv on PATH and the cluster's token


def ray(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    home = tmp_path_factory.mktemp("home")  # no token or config from the user's ~/.ray
    env = {**os.environ, "HOME": str(home), "PATH": f"{BIN}:{os.environ['PATH']}",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    port, dashboard = free_port(), free_port()
    # each node its own temporary directory, as on separate machines (short: it holds Unix sockets)
    temp = Path(tempfile.mkdtemp(prefix="rwt-ray-"))
    try:
        head = ray("start", "--head", "--port", str(port), "--dashboard-host", "127.0.0.1",
                   "--dashboard-port", str(dashboard), "--include-dashboard", "true",
                   "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
                   "--temp-dir", str(temp / "head"), *NODE, env=env)
        assert head.returncode == 0, head.stdout + head.stderr
        worker = ray("start", "--address", f"127.0.0.1:{port}", "--dashboard-agent-listen-port", str(free_port()),
                     "--temp-dir", str(temp / "worker"), *NODE, env=env)
        assert worker.returncode == 0, worker.stdout + worker.stderr
        wait = subprocess.run(
            [str(BIN / "python"), "-c", "import ray, time; ray.init(address='auto'); deadline = time.time() + 60\n"
             "while sum(n['Alive'] for n in ray.nodes()) < 2 and time.time() < deadline: time.sleep(1)\n"
             "assert sum(n['Alive'] for n in ray.nodes()) == 2"],
            env={**env, "RAY_ADDRESS": f"127.0.0.1:{port}"}, capture_output=True, text=True, timeout=120)
        assert wait.returncode == 0, wait.stderr
        yield Cluster(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}", env)
    finally:
        ray("stop", "--force", env=env)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri


def test_ray_job_submit_runs_the_search_on_both_nodes(cluster, server, tmp_path):
    out, storage = tmp_path / "runs", tmp_path / "shared-storage"
    submit = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", cluster.dashboard, "--working-dir", str(REPO),
         "--runtime-env", str(REPO / "docker" / "runtime-env.yaml"), "--",
         "python", "-m", "tuner.search", "--widths", "1,2", "--trials", "2", "--seeds", "1", "--epochs", "1", "--concurrency", "2",
         "--out", str(out), "--name", "job", "--storage", str(storage), "--tracking-uri", server],
        cwd=REPO, env=cluster.env, capture_output=True, text=True, timeout=900)
    assert submit.returncode == 0 and "succeeded" in submit.stdout, submit.stdout[-3000:] + submit.stderr[-3000:]

    rows = pq.read_table(out / "job" / "trials.parquet").to_pylist()
    assert len(rows) == 4 and all(r["status"] == "completed" for r in rows)
    assert len({r["node"] for r in rows}) == 2, "the trials all ran on one node"
    assert all(r["checkpoint"].startswith(str(storage / "job")) for r in rows)  # Tune's storage is --storage

    client = MlflowClient(server)
    runs = client.search_runs([client.get_experiment_by_name("job").experiment_id],
                              filter_string="tags.`rwt.kind` = 'trial'")
    assert sorted(r.data.tags["ray_trial_id"] for r in runs) == sorted(r["trial_id"] for r in rows)
    assert {r.data.tags["node"] for r in runs} == {r["node"] for r in rows}


def peak(rows: list[dict], weight=lambda row: 1.0) -> float:
    """The largest sum of `weight` over the trials running at one instant."""
    events = sorted([(r["started_at"], weight(r)) for r in rows] + [(r["finished_at"], -weight(r)) for r in rows],
                    key=lambda e: (e[0], e[1]))
    running = top = 0.0
    for _, change in events:
        running += change
        top = max(top, running)
    return top


def test_trials_are_packed_by_the_presets_gpu_fractions(cluster, tmp_path):
    """Width 1 takes half a GPU per trial, width 2 a whole one, side by side on 2 GPUs.

    Ray never reserves more than 2 GPUs at once, and more than 2 trials ran at once (half-GPU
    trials shared a GPU). That trials overlapped needs trials long enough on 2 busy cores (4
    epochs, about 4 times Tune's start-up of a trial).
    """
    quick = load_preset("quick")
    resources = [{"min_width": 1, "workers": 1, "cpus": 0.25, "gpus": 0.5},
                 {"min_width": 2, "workers": 1, "cpus": 0.25, "gpus": 1}]
    (tmp_path / "gpus.yaml").write_text(yaml.safe_dump(
        {"trial": quick.trial, "search": {**quick.search, "resources": resources, "concurrency": None}}))
    result = run_command("tuner.search", "--preset", str(tmp_path / "gpus.yaml"), "--address", cluster.address,
                         "--widths", "1,2", "--trials", "4", "--seeds", "1", "--epochs", "4", "--out", "runs", "--name", "gpus",
                         cwd=tmp_path, env=cluster.env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ray: 2 node(s), 2 CPU, 2 GPU" in result.stdout
    assert "w1: up to 4 trial(s) at once" in result.stdout and "w2: up to 2 trial(s) at once" in result.stdout
    rows = pq.read_table(tmp_path / "runs" / "gpus" / "trials.parquet").to_pylist()
    assert len(rows) == 8 and all(r["status"] in ("completed", "early_stopped") for r in rows)
    assert peak(rows, weight=lambda r: {1: 0.5, 2: 1.0}[r["width"]]) <= 2.0
    assert peak(rows) >= 3
