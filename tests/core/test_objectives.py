"""The objectives are the formulas they claim: λ weights exactly the robust regularizer."""

from __future__ import annotations

import copy
import math

import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from torch import nn

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


class Recorder(nn.Module):
    """A model that keeps every input it sees in train mode: the inputs the objective's loss is computed on."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.loss_inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.loss_inputs.append(x.detach().clone())
        return self.model(x)

    def attacked_input(self, x: torch.Tensor) -> torch.Tensor:
        """The one loss input other than the clean `x`: the objective's x'."""
        (x_adv,) = [seen for seen in self.loss_inputs if not torch.equal(seen, x)]
        return x_adv


def tiny_model() -> Recorder:
    """A BatchNorm-free float64 net on 2×2 one-channel images with 3 classes (train and eval mode agree),
    with weights large enough that ε = 0.3 moves the softmax far (KL(p ‖ q) and KL(q ‖ p) then differ)."""
    torch.manual_seed(4)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    with torch.no_grad():
        for param in net.parameters():
            param.mul_(4.0)
    return Recorder(net).train()


def tiny_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    return torch.rand(6, 1, 2, 2, generator=generator, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])


def hand_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Σ_k p_k (log p_k − log q_k) per example, p and q the softmaxes written out, then the mean over examples."""
    p = p_logits.exp() / p_logits.exp().sum(1, keepdim=True)
    q = q_logits.exp() / q_logits.exp().sum(1, keepdim=True)
    return (p * (p.log() - q.log())).sum(1).mean()


def hand_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    p = logits.exp() / logits.exp().sum(1, keepdim=True)
    return -p[torch.arange(len(y)), y].log().mean()


def test_kl_to_is_kl_of_clean_to_attacked_on_hand_computed_logits():
    clean = torch.tensor([[0.0, math.log(3.0)]])  # softmax (1/4, 3/4)
    attacked = torch.tensor([[0.0, 0.0]])  # softmax (1/2, 1/2)
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    reverse = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert abs(expected - reverse) > 0.01
    assert objectives.kl_to(clean)(attacked).item() == pytest.approx(expected, rel=1e-6)


def test_trades_loss_is_ce_plus_lambda_times_the_batch_mean_kl_clean_to_attacked():
    model, (x, y) = tiny_model(), tiny_batch()
    value = get_objective("trades")(model, x, y, lam=2.5, attack=AttackSettings(epsilon=0.3, step_size=0.1, steps=3))
    x_adv = model.attacked_input(x)
    with torch.no_grad():
        clean, attacked = model.model(x), model.model(x_adv)
    kl, reverse = hand_kl(clean, attacked), hand_kl(attacked, clean)
    assert abs(kl - reverse) > 0.05 * kl, "the KL directions must be distinguishable here"
    torch.testing.assert_close(value.regularizer, kl, rtol=1e-9, atol=0)
    torch.testing.assert_close(value.natural_loss, hand_ce(clean, y), rtol=1e-9, atol=0)
    torch.testing.assert_close(value.loss.detach(), hand_ce(clean, y) + 2.5 * kl, rtol=1e-9, atol=0)


def test_trades_gradient_matches_a_finite_difference_of_the_formula():
    """Both sides of the KL depend on the parameters: the gradient flows through the clean softmax too."""
    model, (x, y) = tiny_model(), tiny_batch()
    value = get_objective("trades")(model, x, y, lam=2.5, attack=AttackSettings(epsilon=0.3, step_size=0.1, steps=3))
    x_adv = model.attacked_input(x)
    params = list(model.parameters())
    grads = torch.autograd.grad(value.loss, params)

    def formula() -> float:
        with torch.no_grad():
            clean = model.model(x)
            return (hand_ce(clean, y) + 2.5 * hand_kl(clean, model.model(x_adv))).item()

    h = 1e-6
    for param, grad in zip(params, grads):
        flat, flat_grad = param.data.view(-1), grad.view(-1)
        for i in range(len(flat)):
            original = flat[i].item()
            flat[i] = original + h
            up = formula()
            flat[i] = original - h
            down = formula()
            flat[i] = original
            assert flat_grad[i].item() == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-8)


def reference_pgd(model, x, loss_fn, attack):
    """Sign-gradient ascent from x + 0.001·N(0, 1), projected to the ε-ball and [0, 1], written out here."""
    x_adv = x + 0.001 * torch.randn_like(x)
    for _ in range(attack.steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(model(x_adv)).sum(), x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + attack.step_size * grad.sign(), x - attack.epsilon),
                          x + attack.epsilon).clamp(0, 1)
    return x_adv


@pytest.fixture
def wrong_labels_batch(undefended, digits):
    """Labels the undefended model gets wrong: raising their CE and moving away from its clean prediction disagree."""
    x = digits.val.images[:128]
    with torch.no_grad():
        clean = undefended(x)
    return undefended, x, (clean.argmax(1) + 1) % 10, clean


@pytest.mark.parametrize("method", ["trades", "pgd-at"])
def test_each_objective_attacks_its_own_loss(wrong_labels_batch, method):
    """TRADES' x′ must raise the KL to the clean prediction, PGD-AT's the CE with the label, well beyond what
    the other attack does (gains over the clean input's loss)."""
    undefended, x, y, clean = wrong_labels_batch
    model = Recorder(copy.deepcopy(undefended)).train()  # BatchNorm moves in train mode: a copy
    attack = AttackSettings(epsilon=0.1, step_size=0.025, steps=5)
    torch.manual_seed(0)
    get_objective(method)(model, x, y, lam=1.0, attack=attack)

    def kl(logits):
        return F.kl_div(F.log_softmax(logits, 1), F.softmax(clean, 1), reduction="none").sum(1)

    def ce(logits):
        return F.cross_entropy(logits, y, reduction="none")

    own, other = (kl, ce) if method == "trades" else (ce, kl)
    x_own, x_other = (reference_pgd(undefended, x, loss_fn, attack) for loss_fn in (own, other))
    with torch.no_grad():
        base = own(undefended(x)).mean()
        reached, by_own, by_other = (own(undefended(x_adv)).mean() - base
                                     for x_adv in (model.attacked_input(x), x_own, x_other))
    assert by_own > 1.5 * by_other, "the two attacks must be distinguishable here"
    assert reached > 0.8 * by_own
    assert reached > 1.5 * by_other


def test_pgd_at_starts_uniformly_in_the_ball():
    """With step size 0 the attack returns its start: uniform in [x − ε, x + ε] per pixel, not x."""
    torch.manual_seed(0)
    model = Recorder(nn.Sequential(nn.Flatten(), nn.Linear(64, 10))).train()
    x, y = torch.full((64, 1, 8, 8), 0.5), torch.zeros(64, dtype=torch.long)
    get_objective("pgd-at")(model, x, y, lam=1.0, attack=AttackSettings(epsilon=0.1, step_size=0.0, steps=1))
    delta = (model.attacked_input(x) - x).flatten()
    assert delta.abs().max() <= 0.1 + 1e-6
    assert scipy.stats.kstest(delta.numpy(), scipy.stats.uniform(loc=-0.1, scale=0.2).cdf).pvalue > 1e-3


@pytest.mark.parametrize("method", ["trades", "pgd-at"])
def test_batchnorm_statistics_move_only_with_the_loss_inputs(setup, method):
    """The attack runs in eval mode: running statistics see x and x′ once each, as in training on just those."""
    model, x, y = setup
    recorder = Recorder(copy.deepcopy(model)).train()
    get_objective(method)(recorder, x, y, lam=1.0, attack=ATTACK)
    distinct = []  # x and x′, in the order the loss saw them
    for seen in recorder.loss_inputs:
        if not any(torch.equal(seen, batch) for batch in distinct):
            distinct.append(seen)
    assert len(distinct) == 2
    replay = copy.deepcopy(model).train()
    with torch.no_grad():
        for batch in distinct:
            replay(batch)
    for (name, actual), expected in zip(recorder.model.named_buffers(), replay.buffers()):
        torch.testing.assert_close(actual, expected, msg=name)
