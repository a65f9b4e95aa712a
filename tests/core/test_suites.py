"""Suites give the worst case per example over their attacks and the clean input, on the right examples."""

from __future__ import annotations

import math

import pytest
import torch

from tuner.core import attacks
from tuner.core.attacks import get_attack
from tuner.core.data import Split, batches
from tuner.core.objectives import AttackSettings
from tuner.core.suites import (COUNTS, Suite, SuiteAttack, SuiteResult, evaluate_suite, get_suite, list_suites,
                                suite_counts)
from tuner.errors import ConfigError

# The shape of `standard` with few steps and targets, to keep these tests fast.
TINY = Suite("tiny", (SuiteAttack("apgd-ce", {"steps": 10}), SuiteAttack("apgd-t", {"steps": 10, "targets": 2})), "")


@pytest.fixture
def val(digits):
    return digits.val.images[:150], digits.val.labels[:150]


def correct_after_every_attack(model, x, y, suite, epsilon):
    """The suite's definition, attacking every example with every attack (no survivor bookkeeping)."""
    with torch.no_grad():
        correct = model(x).argmax(1) == y
        for step in get_suite(suite).attacks:
            correct &= model(get_attack(step.attack)(model, x, y, epsilon=epsilon, **step.options)).argmax(1) == y
    return correct


def test_standard_and_fast_are_registered_by_name():
    assert {"standard", "fast"} <= set(list_suites())
    assert [(a.attack, dict(a.options)) for a in get_suite("standard").attacks] == [
        ("apgd-ce", {"steps": 100}), ("apgd-t", {"steps": 100, "targets": 9})]
    with pytest.raises(ConfigError, match="unknown attack suite 'strong'"):
        evaluate_suite(torch.nn.Linear(1, 1), [], suite="strong", epsilon=0.1)


def test_counts_add_up_and_every_example_counts_once(undefended, val):
    x, y = val
    torch.manual_seed(0)
    result = evaluate_suite(undefended, [(x[:70], y[:70]), (x[70:], y[70:])], suite=TINY, epsilon=0.03)
    assert result.suite == "tiny" and result.examples == len(y)
    with torch.no_grad():
        natural = (undefended(x).argmax(1) == y).sum().item()
    assert result.natural_correct == natural
    assert result.robust_correct == result.natural_correct - sum(result.broken.values())
    assert list(result.broken) == ["apgd-ce", "apgd-t"]
    assert 0 < result.robust_correct < result.natural_correct
    assert result.pgd_robust_correct is None and result.pgd_robust_acc is None


def test_zero_epsilon_breaks_nothing(undefended, val):
    x, y = val
    result = evaluate_suite(undefended, [(x[:60], y[:60])], suite=TINY, epsilon=0.0,
                            pgd=AttackSettings(0.0, 0.0, 2))
    assert result.robust_correct == result.natural_correct == result.pgd_robust_correct
    assert set(result.broken.values()) == {0}


def test_attacking_only_survivors_matches_attacking_every_example(undefended, val):
    """Up to the attacks' random starts: a few examples near the boundary may go either way."""
    x, y = val
    torch.manual_seed(0)
    suite = evaluate_suite(undefended, [(x, y)], suite=TINY, epsilon=0.03)
    torch.manual_seed(1)
    every = correct_after_every_attack(undefended, x, y, TINY, 0.03).sum().item()
    assert abs(suite.robust_correct - every) <= 3, (suite.robust_correct, every)


def test_an_empty_shard_counts_zero_and_shards_sum_to_the_whole(undefended, val):
    empty = suite_counts(undefended, iter([]), suite=TINY, epsilon=0.1, pgd=AttackSettings(0.1, 0.025, 2))
    assert empty.tolist() == [0.0] * (len(COUNTS) + 2)
    with pytest.raises(ValueError, match="empty split"):
        SuiteResult.from_counts(empty, suite=TINY, epsilon=0.1)
    torch.manual_seed(0)
    x, y = val
    shards = sum(suite_counts(undefended, batches(Split(x[:60], y[:60]), 16, rank=r, world_size=2), suite=TINY,
                              epsilon=0.0) for r in range(2))
    whole = SuiteResult.from_counts(shards, suite=TINY, epsilon=0.0)
    assert whole.examples == 60 and whole.robust_correct == whole.natural_correct and math.isnan(shards[COUNTS.index("pgd_robust_correct")])


def test_epsilon_outside_pixel_range_is_refused(undefended, digits):
    with pytest.raises(ConfigError, match="epsilon must be in"):
        evaluate_suite(undefended, batches(digits.val, 100), suite=TINY, epsilon=8)


@pytest.mark.slow
@pytest.mark.parametrize("suite", ["standard", "fast"])
def test_suite_is_at_least_as_strong_as_pgd20_on_a_trades_model(trades_quick, suite):
    model, data = trades_quick
    torch.manual_seed(0)
    test = Split(data.test.images[:200], data.test.labels[:200])
    result = evaluate_suite(model, batches(test, 512), suite=suite, epsilon=0.1, pgd=AttackSettings(0.1, 0.01, 20))
    assert result.robust_acc <= result.pgd_robust_acc <= result.natural_acc
    assert result.robust_acc > 0.5, "the TRADES model should keep most of its accuracy at ε = 0.1"


class Logits(torch.nn.Module):
    """The first three input columns are the logits; the last two only say which attack breaks the example."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x[:, :3]


def breaks_where(column: int):
    """An attack that misclassifies exactly the examples with a 1 in `column`, and leaves the others as they are."""

    def attack(model, x, y, *, epsilon):
        x_adv = x.clone()
        hit = x[:, column] == 1
        x_adv[hit, :3] = 0.0
        x_adv[hit, (y[hit] + 1) % 3] = 1.0
        return x_adv

    return attack


def test_each_attack_breaks_only_survivors_and_robust_is_the_worst_case_on_hand_made_examples(monkeypatch):
    """Every combination of clean-correct, broken by the first attack, broken by the second: counted by hand."""
    monkeypatch.setitem(attacks.ATTACKS._entries, "breaks-a", breaks_where(3))
    monkeypatch.setitem(attacks.ATTACKS._entries, "breaks-b", breaks_where(4))
    suite = Suite("hand", (SuiteAttack("breaks-a"), SuiteAttack("breaks-b")), "")
    cases = [(clean, a, b) for clean in (1, 0) for a in (0, 1) for b in (0, 1)]
    y = torch.zeros(len(cases), dtype=torch.long)
    x = torch.tensor([[1.0 if clean else 0.0, 0.0 if clean else 1.0, 0.0, a, b] for clean, a, b in cases])
    result = evaluate_suite(Logits(), [(x, y)], suite=suite, epsilon=0.1)
    assert (result.examples, result.natural_correct) == (8, 4)
    assert result.broken == {"breaks-a": 2, "breaks-b": 1}, "b breaks only what a left: clean, not a, b"
    assert result.robust_correct == 1, "only the clean-correct example that neither attack breaks"
