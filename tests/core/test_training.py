"""The trial loop: selection on validation, test only for the selected checkpoint, exact resume."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import pytest
import torch

from tuner.core import training
from tuner.core.data import Split
from tuner.core.metrics import Evaluation
from tuner.core.training import BEST, CHECKPOINT_DIR, LAST, evaluate_split, prepare, run_trial

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


class Interrupted(Exception):
    pass


def stop_after_first(report):
    raise Interrupted


def test_resume_after_an_interruption_matches_an_uninterrupted_run(finished, quick, tmp_path):
    _, uninterrupted = finished
    with pytest.raises(Interrupted):
        run_trial(prepare(quick), work_dir=tmp_path, on_epoch=stop_after_first, log=None)
    epochs = []
    resumed = run_trial(prepare(quick), work_dir=tmp_path, on_epoch=lambda report: epochs.append(report.record["epoch"]), log=None)
    assert epochs == [2]
    assert strip_time(resumed) == strip_time(uninterrupted)


def on_few_examples(prepared, n=128):
    """`prepared` training on its first `n` examples: these tests are about the loop, not about accuracy."""
    train = Split(prepared.data.train.images[:n], prepared.data.train.labels[:n])
    return dataclasses.replace(prepared, data=dataclasses.replace(prepared.data, train=train))


def scripted_evaluations(monkeypatch, val_metrics):
    """Per-epoch validation reports the given (natural, robust) accuracies epoch after epoch (on the
    whole split: `val_epoch_examples` None, so no rest to pool); the test evaluation returns fixed
    numbers and records the parameters of the model it was given."""
    scripted, tested = iter(val_metrics), []

    def count_split(prepared, split):
        if len(split) == 0:
            return torch.zeros(5, dtype=torch.float64)
        if split is prepared.data.test:
            tested.append({k: v.clone() for k, v in prepared.model.state_dict().items()})
            natural, robust = 0.7, 0.35
        else:
            natural, robust = next(scripted)
        return Evaluation(natural, robust, stability=0.5, lipschitz=1.0, examples=len(split)).counts()

    monkeypatch.setattr(training, "count_split", count_split)
    return tested


def test_best_robust_epoch_is_selected_though_natural_disagrees_and_its_model_is_the_one_tested(quick, tmp_path,
                                                                                                 monkeypatch):
    """Robust accuracy peaks at epoch 2; natural accuracy would pick 4, the last."""
    tested = scripted_evaluations(monkeypatch, [(0.50, 0.20), (0.60, 0.40), (0.90, 0.30), (0.95, 0.35)])
    prepared = on_few_examples(prepare(quick.replace(epochs=4, val_epoch_examples=None)))
    states = {}  # each epoch's model, as checkpointed for resuming
    metrics = run_trial(prepared, work_dir=tmp_path, log=None, on_epoch=lambda report: states.setdefault(
        report.record["epoch"], torch.load(report.checkpoint_dir / LAST, weights_only=True)["model"]))
    assert metrics["best_epoch"] == 2
    assert (metrics["val_natural_acc"], metrics["val_robust_acc"]) == pytest.approx((0.60, 0.40), abs=1e-2)
    assert (metrics["test_natural_acc"], metrics["test_robust_acc"]) == pytest.approx((0.7, 0.35), abs=1e-2)
    assert len(tested) == 1
    assert not all(torch.equal(states[2][k], states[4][k]) for k in states[2]), "training must move the model"
    assert all(torch.equal(tested[0][k], states[2][k]) for k in states[2]), "the test must see epoch 2's model"
    assert torch.load(tmp_path / CHECKPOINT_DIR / BEST, weights_only=True)["epoch"] == 2


def test_ties_in_robust_accuracy_select_the_latest_epoch():
    history = [{"epoch": e, "val_robust_acc": r} for e, r in [(1, 0.2), (2, 0.4), (3, 0.3), (4, 0.4), (5, 0.1)]]
    assert training.select_epoch(history)["epoch"] == 4


def test_learning_rate_schedule_survives_a_resume_across_its_milestone(quick, tmp_path, monkeypatch):
    """4 epochs with a milestone at epoch 2: learning rates lr, lr, lr·γ, lr·γ, interrupted after epoch 1 or not."""
    scripted_evaluations(monkeypatch, [(0.5, 0.2)] * 5)
    config = quick.replace(epochs=4, lr_milestones=[0.5])
    with pytest.raises(Interrupted):
        run_trial(on_few_examples(prepare(config)), work_dir=tmp_path, on_epoch=stop_after_first, log=None)
    metrics = run_trial(on_few_examples(prepare(config)), work_dir=tmp_path, log=None)
    lr, gamma = config.lr, config.lr_gamma
    assert [r["lr"] for r in metrics["history"]] == pytest.approx([lr, lr, lr * gamma, lr * gamma], rel=1e-12)


def test_a_trial_resumed_after_its_last_epoch_was_saved_only_finishes(finished, quick, tmp_path):
    """The process died after the last checkpoint but before metrics.json: nothing is trained again."""
    work, first = finished
    shutil.copytree(work / CHECKPOINT_DIR, tmp_path / CHECKPOINT_DIR)
    epochs = []
    metrics = run_trial(prepare(quick), work_dir=tmp_path, on_epoch=lambda report: epochs.append(report), log=None)
    assert epochs == []
    assert strip_time(metrics) == strip_time(first)
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics


@pytest.mark.parametrize("split_name", ["val", "test"])
def test_evaluate_split_evaluates_the_named_split(quick, split_name):
    prepared = prepare(quick)
    split = getattr(prepared.data, split_name)
    evaluation = evaluate_split(prepared, split_name)
    with torch.no_grad():
        expected = (prepared.model.eval()(split.images).argmax(1) == split.labels).double().mean().item()
    assert evaluation.examples == len(split)
    assert evaluation.natural_acc == pytest.approx(expected)


class Tripwire:
    """Unpickling it creates a directory: code run by loading a checkpoint (weights_only refuses it; torch's error
    then suggests loading unsafely, which we must neither do nor advise)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


@pytest.mark.parametrize("damage", ["truncated", "empty", "unsafe pickle", "another width"])
def test_a_damaged_checkpoint_is_one_error_naming_the_file_and_the_way_out(finished, quick, tmp_path, damage):
    work, _ = finished
    last = tmp_path / CHECKPOINT_DIR / LAST
    last.parent.mkdir()
    good = (work / CHECKPOINT_DIR / LAST).read_bytes()
    if damage == "truncated":
        last.write_bytes(good[:len(good) // 2])
    elif damage == "empty":
        last.write_bytes(b"")
    elif damage == "unsafe pickle":
        torch.save({"model": Tripwire(str(tmp_path / "code-ran"))}, last)
    else:
        last.write_bytes(good)
        quick = quick.replace(width=3)
    with pytest.raises(training.UnreadableCheckpoint) as error:
        run_trial(prepare(quick), work_dir=tmp_path, log=None)
    message = str(error.value)
    assert str(last) in message and f"delete {last.parent}" in message and "\n" not in message
    assert "weights_only" not in message and "unsafe" not in message.lower()
    assert not (tmp_path / "code-ran").exists(), "loading the checkpoint ran code from it"
    why = "holds another model" if damage == "another width" else "truncated, empty or not written by this tool"
    assert why in message


def test_a_long_epoch_says_where_it_is(quick, monkeypatch):
    """With the interval at 0 s every batch is reported: the counts climb to the training split's size."""
    monkeypatch.setattr(training, "PROGRESS_SECONDS", 0.0)
    prepared = on_few_examples(prepare(quick), n=256)
    lines = []
    optimizer, _ = training.make_optimizer(prepared.model, quick)
    training.train_one_epoch(prepared.model, optimizer, prepared, epoch=1, log=lines.append)
    assert lines[0].startswith(f"epoch 1/{quick.epochs}: 64 of 256 training examples")
    assert lines[-1].startswith(f"epoch 1/{quick.epochs}: 256 of 256 training examples") and len(lines) == 4
