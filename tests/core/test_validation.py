"""Per-epoch validation on a fixed subset, the selected epoch on the whole validation split.

The per-epoch numbers (which ASHA compares) are PGD-20 on the same examples in every trial; the
selected epoch's reported validation metrics are PGD-20 on the whole split, each example once.
"""

from __future__ import annotations

import pytest
import torch

from tuner.core import training
from tuner.core.metrics import COUNTS, Evaluation
from tuner.core.training import BEST, CHECKPOINT_DIR, count_split, prepare, run_trial, validation_parts


@pytest.fixture(scope="module")
def trial(quick, tmp_path_factory):
    work = tmp_path_factory.mktemp("validation")
    prepared = prepare(quick.replace(epochs=3))
    return prepared, run_trial(prepared, work_dir=work, log=None), work


def test_the_per_epoch_subset_is_the_same_examples_in_every_trial(quick):
    """Fixed by the split seed: not by width, λ, seed or method, so per-epoch values compare across trials."""
    first = validation_parts(prepare(quick))[0]
    for other in (quick.replace(width=3, lam=0.5, seed=7), quick.replace(method="pgd-at")):
        subset = validation_parts(prepare(other))[0]
        assert torch.equal(subset.images, first.images) and torch.equal(subset.labels, first.labels)
    assert len(first) == quick.val_epoch_examples


def test_subset_and_rest_partition_the_validation_split(quick):
    prepared = prepare(quick)
    subset, rest = validation_parts(prepared)
    assert len(subset) + len(rest) == len(prepared.data.val)
    assert torch.equal(torch.cat([subset.labels, rest.labels]), prepared.data.val.labels)
    whole, empty = validation_parts(prepare(quick.replace(val_epoch_examples=None)))
    assert len(whole) == len(prepared.data.val) and len(empty) == 0
    larger, nothing = validation_parts(prepare(quick.replace(val_epoch_examples=10_000)))
    assert len(larger) == len(prepared.data.val) and len(nothing) == 0


def test_per_epoch_metrics_cover_the_subset_and_the_selected_ones_the_whole_split(trial, quick):
    prepared, metrics, _ = trial
    assert all(r["val_examples"] == quick.val_epoch_examples for r in metrics["history"])
    assert metrics["val_examples"] == len(prepared.data.val)


def test_selected_metrics_pool_the_epoch_subset_with_the_rest_evaluated_once(trial):
    """Natural accuracy is deterministic: the pooled value equals a fresh whole-split evaluation exactly;
    the robust count equals the subset's count at the selected epoch plus the rest's, recomputed here."""
    prepared, metrics, work = trial
    selected = next(r for r in metrics["history"] if r["epoch"] == metrics["best_epoch"])
    prepared.model.load_state_dict(torch.load(work / CHECKPOINT_DIR / BEST, weights_only=True)["model"])
    whole = Evaluation.from_counts(count_split(prepared, prepared.data.val))
    assert metrics["val_natural_acc"] == pytest.approx(whole.natural_acc, abs=1e-12)
    rest = count_split(prepared, validation_parts(prepared)[1])
    subset = Evaluation.from_dict(selected, "val").counts()
    expected = Evaluation.from_counts(subset + rest)
    assert metrics["val_robust_acc"] == expected.robust_acc and metrics["val_stability"] == expected.stability
    assert metrics["val_lipschitz"] == pytest.approx(expected.lipschitz, rel=1e-12)
    assert abs(metrics["val_robust_acc"] - whole.robust_acc) <= 0.03  # only the attacks' random starts differ
    # the definitions' invariant holds for the pooled evaluation
    assert metrics["val_robust_acc"] >= metrics["val_natural_acc"] - (1 - metrics["val_stability"]) - 1e-12


def test_evaluation_counts_round_trip_through_a_record():
    counts = torch.tensor([37.0, 30.0, 21.0, 25.0, 12.345], dtype=torch.float64)
    evaluation = Evaluation.from_counts(counts)
    again = Evaluation.from_dict(evaluation.as_dict("val"), "val")
    assert again == evaluation
    assert again.counts()[:4].tolist() == counts[:4].tolist()
    assert again.counts()[4].item() == pytest.approx(12.345, rel=1e-15)
    assert len(evaluation.counts()) == len(COUNTS)


def test_with_the_whole_split_every_epoch_the_selected_record_is_reported_unchanged(quick, tmp_path, monkeypatch):
    """`val_epoch_examples: null` is the former protocol: nothing is evaluated after the epochs but the test split."""
    sizes = []
    real = training.count_split
    monkeypatch.setattr(training, "count_split", lambda p, split: sizes.append(len(split)) or real(p, split))
    prepared = prepare(quick.replace(epochs=2, val_epoch_examples=None))
    metrics = run_trial(prepared, work_dir=tmp_path, log=None)
    selected = next(r for r in metrics["history"] if r["epoch"] == metrics["best_epoch"])
    assert {k: v for k, v in metrics.items() if k.startswith("val_")} == {k: v for k, v in selected.items()
                                                                          if k.startswith("val_")}
    n_val, n_test = len(prepared.data.val), len(prepared.data.test)
    assert sizes == [n_val, n_val, 0, n_test]
