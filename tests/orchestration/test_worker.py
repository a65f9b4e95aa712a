"""A trial on a Ray worker: what it reports, and what it does with a checkpoint it cannot read."""

from __future__ import annotations

import shutil
from pathlib import Path

from tuner.core.training import CHECKPOINT_DIR, LAST
from tuner.orchestration import worker
from tuner.presets import load_preset


class DirectoryCheckpoint:
    """What run_reported needs of a Ray Checkpoint: to_directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def to_directory(self, path: str) -> None:
        shutil.copytree(self.path, path)


def test_a_trial_whose_checkpoint_is_unreadable_restarts_from_scratch_and_says_so(tmp_path, monkeypatch):
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / LAST).write_bytes(b"PK\x03\x04 cut short")
    monkeypatch.setattr(worker, "epoch_metrics", lambda epoch, started_at: dict(epoch.record))  # no Ray node to name
    reports = []
    config = load_preset("quick").trial_config(width=1, lam=1.0, epochs=1)
    worker.run_reported(config, checkpoint=DirectoryCheckpoint(saved), started_at=0.0,
                        report=lambda metrics, checkpoint_dir: reports.append(metrics))
    assert [r["epoch"] for r in reports] == [1]
    assert all(r[worker.NOTE].startswith(f"restarted from scratch: checkpoint ") for r in reports)
    assert f"{CHECKPOINT_DIR}/{LAST} cannot be used (truncated" in reports[0][worker.NOTE]
