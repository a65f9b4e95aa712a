"""The trial loop: selection on validation, test only for the selected checkpoint, exact resume."""

from __future__ import annotations

import json

import pytest
import torch

from tuner.core import training
from tuner.core.training import BEST, CHECKPOINT_DIR, LAST, prepare, run_trial

REQUIRED_KEYS = {"val_natural_acc", "val_robust_acc", "val_stability", "val_lipschitz", "test_natural_acc",
                 "test_robust_acc", "test_stability", "best_epoch", "width", "lam", "method", "seed"}


def strip_time(metrics):
    return {k: v for k, v in metrics.items() if k != "history"}, [
        {k: v for k, v in r.items() if k != "epoch_seconds"} for r in metrics["history"]]


@pytest.fixture(scope="module")
def finished(quick, tmp_path_factory):
    work = tmp_path_factory.mktemp("trial")
    return work, run_trial(prepare(quick), work_dir=work, log=None)


def test_writes_metrics_and_checkpoints_loadable_with_weights_only(finished, quick):
    work, metrics = finished
    assert REQUIRED_KEYS <= set(metrics)
    assert json.loads((work / "metrics.json").read_text()) == metrics
    assert len(metrics["history"]) == quick.epochs
    assert metrics["width"] == 1 and metrics["lam"] == 6.0 and metrics["method"] == "trades"
    for name in (LAST, BEST):
        state = torch.load(work / CHECKPOINT_DIR / name, weights_only=True)
        assert "model" in state


def test_epoch_is_selected_on_validation_and_only_its_checkpoint_is_tested(quick, tmp_path, monkeypatch):
    prepared = prepare(quick.replace(epochs=3))
    val, n = prepared.data.val, quick.val_epoch_examples
    parts = {"val epoch subset": val[:n], "val rest": val[n:], "test": prepared.data.test}
    evaluated = []
    real = training.count_split
    monkeypatch.setattr(training, "count_split", lambda p, split: evaluated.append(
        next(name for name, part in parts.items() if torch.equal(split.images, part.images))) or real(p, split))
    metrics = run_trial(prepared, work_dir=tmp_path, log=None)
    assert evaluated == ["val epoch subset"] * 3 + ["val rest", "test"]
    best = max(metrics["history"], key=lambda r: r["val_robust_acc"])
    assert metrics["best_epoch"] == best["epoch"]
    assert torch.load(tmp_path / CHECKPOINT_DIR / BEST, weights_only=True)["epoch"] == best["epoch"]
    assert metrics["val_examples"] == len(val) and metrics["test_examples"] == len(prepared.data.test)


def test_same_seed_same_metrics(finished, quick, tmp_path):
    _, first = finished
    assert strip_time(run_trial(prepare(quick), work_dir=tmp_path, log=None)) == strip_time(first)


def test_resume_after_an_interruption_matches_an_uninterrupted_run(finished, quick, tmp_path):
    _, uninterrupted = finished

    class Interrupt(Exception):
        pass

    def stop_after_first(report):
        raise Interrupt

    with pytest.raises(Interrupt):
        run_trial(prepare(quick), work_dir=tmp_path, on_epoch=stop_after_first, log=None)
    epochs = []
    resumed = run_trial(prepare(quick), work_dir=tmp_path, on_epoch=lambda report: epochs.append(report.record["epoch"]), log=None)
    assert epochs == [2]
    assert strip_time(resumed) == strip_time(uninterrupted)
