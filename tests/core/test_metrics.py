"""Metrics are computed on the right examples and satisfy the invariants of their definitions."""

from __future__ import annotations

import pytest
import scipy.stats
import torch

import models
from tuner.core.data import batches
from tuner.core.metrics import COUNTS, Evaluation, evaluate, evaluation_counts, outcome_counts
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


def test_counts_on_hand_made_predictions_of_every_clean_and_attacked_case():
    """Robust: right both clean and attacked. Stable: attacked prediction = clean prediction, right or wrong."""
    cases = [  # (label, clean prediction, attacked prediction, how many)
        (1, 1, 1, 3),  # right, stays right: natural, robust, stable
        (2, 2, 7, 2),  # right, turned wrong: natural only
        (3, 5, 3, 4),  # wrong, turned right: neither robust nor stable
        (4, 6, 6, 5),  # wrong, stays the same wrong: stable only
        (0, 8, 9, 1),  # wrong, turned another wrong: nothing
    ]
    labels, clean, attacked = (torch.tensor([case[i] for case in cases for _ in range(case[3])]) for i in range(3))
    assert outcome_counts(labels, clean, attacked).tolist() == [3 + 2, 3, 3 + 5]


def test_evaluation_runs_in_eval_mode_and_leaves_train_mode_and_statistics_alone(undefended, digits):
    undefended.train()
    try:
        stats = {k: v.clone() for k, v in undefended.state_dict().items()}
        ev = run_eval(undefended, digits.val, 0.0, steps=1)
        assert undefended.training
        assert all(torch.equal(v, undefended.state_dict()[k]) for k, v in stats.items())
    finally:
        undefended.eval()
    with torch.no_grad():
        expected = (undefended(digits.val.images).argmax(1) == digits.val.labels).float().mean().item()
    assert ev.natural_acc == pytest.approx(expected)


def test_lipschitz_probe_is_the_gradient_of_the_kl_to_the_clean_prediction(undefended, digits):
    """At ε = 0 every probe iterate is the clean input, where the KL term has its minimum: a zero gradient.
    With ε > 0 the probe climbs away from it."""
    x, y = digits.val.images[:100], digits.val.labels[:100]
    at_zero = evaluate(undefended, [(x, y)], eval_attack=AttackSettings(0.0, 0.0, 1),
                       probe_attack=AttackSettings(0.0, 0.0, 3))
    assert at_zero.lipschitz < 1e-4
    torch.manual_seed(0)
    climbing = evaluate(undefended, [(x, y)], eval_attack=AttackSettings(0.0, 0.0, 1),
                        probe_attack=AttackSettings(0.1, 0.025, 5))
    assert climbing.lipschitz > 1.0


class InputKeeper(torch.nn.Module):
    """A linear classifier on 8×8 images that keeps every input it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        return self.net(x)


def test_evaluation_attack_starts_uniformly_in_the_eps_ball():
    """With step size 0 the evaluation attack's x′ is its start; the probe's start stays within 0.01 of x."""
    torch.manual_seed(0)
    model = InputKeeper()
    x, y = torch.full((64, 1, 8, 8), 0.5), torch.zeros(64, dtype=torch.long)
    evaluate(model, [(x, y)], eval_attack=AttackSettings(0.1, 0.0, 1), probe_attack=AttackSettings(0.1, 0.0, 1))
    starts = [seen - x for seen in model.inputs if (seen - x).abs().max() > 0.01]
    assert starts, "the evaluation attack never left x"
    delta = starts[0].flatten()
    assert delta.abs().max() <= 0.1 + 1e-6
    assert scipy.stats.kstest(delta.numpy(), scipy.stats.uniform(loc=-0.1, scale=0.2).cdf).pvalue > 1e-3
