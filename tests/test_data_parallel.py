"""A search whose trials train data-parallel over 2 gloo workers (Ray Train inside Tune), killed and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from tests.helpers import run_command

pytestmark = pytest.mark.slow
EPOCHS = 3


def registered_checkpoint(train_runs) -> bool:
    """Whether a Train run has a checkpoint in its saved state, the one a restarted run resumes from."""
    for snapshot in train_runs.glob("*/checkpoint_manager_snapshot.json"):
        try:
            if json.loads(snapshot.read_text()).get("latest_checkpoint_result"):
                return True
        except json.JSONDecodeError:  # being written
            pass
    return False


def test_a_two_worker_trial_resumes_from_its_checkpoint_after_the_driver_is_killed(tmp_path):
    out = tmp_path / "runs"
    args = ["--widths", "1", "--trials", "1", "--seeds", "1", "--epochs", str(EPOCHS), "--workers-per-trial", "2",
            "--cpus-per-trial", "2", "--out", str(out), "--name", "dp"]
    driver = subprocess.Popen([sys.executable, "-m", "tuner.search", *args], cwd=tmp_path, start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    train_runs = out / "dp" / "ray" / "workers"
    try:
        deadline = time.monotonic() + 300
        while not registered_checkpoint(train_runs) and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.2)
        assert registered_checkpoint(train_runs), "no checkpoint of the Train run before the driver ended"
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver, its local Ray and the trial's workers, as in a crash
        planned = driver.communicate()[0]
    assert "w1: 2 data-parallel workers × (1 CPU) per trial" in planned
    assert not (out / "dp" / "trials.parquet").exists(), "the trial finished before it could be killed"

    resumed_at = time.monotonic()
    result = run_command("tuner.search", "--resume", "--out", str(out), cwd=tmp_path)
    result_seconds = time.monotonic() - resumed_at
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = pq.read_table(out / "dp" / "trials.parquet").to_pylist()
    assert row["status"] == "completed" and row["epochs_run"] == EPOCHS and row["test_robust_acc"] is not None
    assert row["checkpoint"].startswith(str(train_runs)) and row["node"]
    epochs = [e["epoch"] for e in pq.read_table(out / "dp" / "epochs.parquet").to_pylist()]
    assert sorted(epochs) == list(range(1, EPOCHS + 1))

    # Tune's log of the trial: its run after the kill started from the checkpoint, not from epoch 1
    (log,) = (out / "dp" / "ray" / "search").glob("w1-lam*/result.json")
    reports = [json.loads(line) for line in log.read_text().splitlines()]
    last_start = max(r["started_at"] for r in reports)
    assert last_start > time.time() - result_seconds - 5, "the trial was not run again after the kill"
    assert min(r["epoch"] for r in reports if r["started_at"] == last_start) >= 2
