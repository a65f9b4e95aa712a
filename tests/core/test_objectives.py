"""The objectives are the formulas they claim: λ weights exactly the robust regularizer."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import models
from tuner.core import objectives
from tuner.errors import ConfigError
from tuner.core.objectives import AttackSettings, get_objective, list_objectives

ATTACK = AttackSettings(epsilon=0.1, step_size=0.03, steps=3)


@pytest.fixture
def setup(digits):
    torch.manual_seed(1)
    model = models.create_model("cnn", width=1, num_classes=10, in_channels=1)
    model.train()
    return model, digits.train.images[:64], digits.train.labels[:64]


def sgd_step(model, loss_fn):
    model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    optimizer.zero_grad()
    loss_fn(model).backward()
    optimizer.step()
    return model


def test_registry_lists_both_methods_and_rejects_unknown():
    assert list_objectives() == ["pgd-at", "trades"]
    with pytest.raises(ConfigError, match="unknown method 'mart'.*pgd-at, trades"):
        get_objective("mart")


def test_trades_with_lambda_zero_takes_exactly_the_plain_ce_step(setup):
    model, x, y = setup
    trades = sgd_step(model, lambda m: get_objective("trades")(m, x, y, lam=0.0, attack=ATTACK).loss)
    plain = sgd_step(model, lambda m: F.cross_entropy(m(x), y))
    for (name, a), b in zip(trades.named_parameters(), plain.parameters()):
        assert torch.equal(a, b), name
    assert not all(torch.equal(a, b) for a, b in zip(trades.parameters(), model.parameters()))


def test_trades_regularizer_is_the_batch_mean_kl_and_lambda_weights_it(setup):
    model, x, y = setup
    torch.manual_seed(0)
    value = get_objective("trades")(model, x, y, lam=2.5, attack=ATTACK)
    torch.testing.assert_close(value.loss.detach(), value.natural_loss + 2.5 * value.regularizer)
    assert value.regularizer > 0


def test_pgd_at_with_lambda_one_equals_ce_on_the_adversarial_inputs(setup, monkeypatch):
    model, x, y = setup
    attacks = []
    real_pgd = objectives.pgd_linf
    monkeypatch.setattr(objectives, "pgd_linf", lambda *a, **k: attacks.append(real_pgd(*a, **k)) or attacks[-1])
    value = get_objective("pgd-at")(model, x, y, lam=1.0, attack=ATTACK)
    (x_adv,) = [a.x_adv for a in attacks]
    assert torch.equal(value.loss, F.cross_entropy(model(x_adv), y))
    grads = torch.autograd.grad(value.loss, list(model.parameters()))
    expected = torch.autograd.grad(F.cross_entropy(model(x_adv), y), list(model.parameters()))
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    torch.testing.assert_close(value.regularizer, F.cross_entropy(model(x_adv), y).detach() - value.natural_loss)
