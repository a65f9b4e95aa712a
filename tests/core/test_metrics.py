"""Metrics are computed on the right examples and satisfy the invariants of their definitions."""

from __future__ import annotations

import pytest
import torch

import models
from tuner.core.data import batches
from tuner.core.metrics import COUNTS, Evaluation, evaluate, evaluation_counts
from tuner.core.objectives import AttackSettings


def run_eval(model, split, epsilon, steps=20):
    torch.manual_seed(0)
    return evaluate(model, batches(split, 100), eval_attack=AttackSettings(epsilon, epsilon / 4, steps),
                    probe_attack=AttackSettings(epsilon, epsilon / 4, 5))


def assert_invariants(ev):
    assert 0 <= ev.robust_acc <= ev.natural_acc <= 1
    assert ev.robust_acc >= ev.natural_acc - (1 - ev.stability) - 1e-12
    assert 0 <= ev.stability <= 1 and ev.lipschitz >= 0


@pytest.mark.parametrize("epsilon", [0.0, 0.05, 0.1, 0.3])
def test_invariants_hold_on_a_trained_model(undefended, digits, epsilon):
    ev = run_eval(undefended, digits.val, epsilon)
    assert_invariants(ev)
    assert ev.examples == len(digits.val)


def test_invariants_hold_on_an_untrained_model(digits):
    torch.manual_seed(3)
    model = models.create_model("cnn", width=1, num_classes=10, in_channels=1).eval()
    assert_invariants(run_eval(model, digits.val, 0.1))


def test_undefended_model_falls_to_near_zero_at_large_epsilon(undefended, digits):
    ev = run_eval(undefended, digits.val, 0.3)
    assert ev.natural_acc > 0.9
    assert ev.robust_acc < 0.05
    assert ev.stability < 0.15


def test_zero_epsilon_changes_nothing(undefended, digits):
    ev = run_eval(undefended, digits.val, 0.0, steps=2)
    assert ev.robust_acc == ev.natural_acc and ev.stability == 1.0


def test_counts_cover_every_example_once_whatever_the_batch_size(undefended, digits):
    torch.manual_seed(0)
    a = evaluate(undefended, batches(digits.val, 7), eval_attack=AttackSettings(0.0, 0.0, 1),
                 probe_attack=AttackSettings(0.0, 0.0, 1))
    b = evaluate(undefended, batches(digits.val, 1000), eval_attack=AttackSettings(0.0, 0.0, 1),
                 probe_attack=AttackSettings(0.0, 0.0, 1))
    assert a.examples == b.examples == len(digits.val)
    assert a.natural_acc == b.natural_acc
    with torch.no_grad():
        expected = (undefended(digits.val.images).argmax(1) == digits.val.labels).float().mean().item()
    assert a.natural_acc == pytest.approx(expected)


def test_an_empty_shard_counts_zero_and_an_empty_split_is_refused(undefended):
    """A worker whose shard is empty still joins the sum; only the whole split being empty is an error."""
    counts = evaluation_counts(undefended, iter([]), eval_attack=AttackSettings(0.0, 0.0, 1),
                               probe_attack=AttackSettings(0.0, 0.0, 1))
    assert counts.tolist() == [0.0] * len(COUNTS)
    with pytest.raises(ValueError, match="empty split"):
        Evaluation.from_counts(counts)
