"""PGD stays in the threat model, actually attacks, and leaves the model as it found it."""

from __future__ import annotations

import math

import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from tuner.core.attacks import pgd_linf
from tuner.core.objectives import cross_entropy_to, kl_to

EPS = 0.1


@pytest.fixture
def batch(digits):
    return digits.val.images[:128], digits.val.labels[:128]


@pytest.mark.parametrize("start", ["uniform", "normal", "none"])
def test_output_stays_in_eps_ball_and_pixel_range(undefended, batch, start):
    x, y = batch
    x_adv = pgd_linf(undefended, x, cross_entropy_to(y), epsilon=EPS, step_size=0.05, steps=10, start=start).x_adv
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() > EPS / 2, "the attack did not move"


@pytest.mark.parametrize("loss", ["ce", "kl"])
def test_attack_raises_the_loss_over_the_clean_input(undefended, batch, loss):
    x, y = batch
    with torch.no_grad():
        clean_logits = undefended(x)
    loss_fn = cross_entropy_to(y) if loss == "ce" else kl_to(clean_logits)
    x_adv = pgd_linf(undefended, x, loss_fn, epsilon=EPS, step_size=0.025, steps=10,
                     start="uniform" if loss == "ce" else "normal").x_adv
    with torch.no_grad():
        clean, attacked = loss_fn(undefended(x)), loss_fn(undefended(x_adv))
    assert attacked.mean() > clean.mean() + 0.1
    # per example, PGD from a random start should rarely end below the clean loss
    assert (attacked >= clean - 1e-4).float().mean() > 0.9


@pytest.mark.parametrize("training", [True, False])
def test_mode_restored_no_parameter_gradient_and_running_stats_untouched(undefended, batch, training):
    x, y = batch
    undefended.train(training)
    assert all(p.grad is None for p in undefended.parameters())
    stats = {k: v.clone() for k, v in undefended.state_dict().items()}
    seen_modes = []
    hook = undefended[0].register_forward_hook(lambda m, i, o: seen_modes.append(m.training))
    try:
        pgd_linf(undefended, x, cross_entropy_to(y), epsilon=EPS, step_size=0.05, steps=3)
    finally:
        hook.remove()
        mode_after = undefended.training
        undefended.eval()
    assert seen_modes == [False] * 3, "the attack must run the model in eval mode"
    assert mode_after is training
    assert all(p.grad is None for p in undefended.parameters())
    assert all(torch.equal(v, undefended.state_dict()[k]) for k, v in stats.items())


def test_gradient_probe_is_the_l1_norm_of_the_input_gradient(undefended, batch):
    x, y = batch
    result = pgd_linf(undefended, x, cross_entropy_to(y), epsilon=EPS, step_size=0.05, steps=1, start="none")
    x_req = x.clone().requires_grad_(True)
    F.cross_entropy(undefended(x_req), y, reduction="sum").backward()
    torch.testing.assert_close(result.max_grad_l1, x_req.grad.abs().flatten(1).sum(1))


def start_of(start):
    """The attack's starting point around x = 0.5 (no clamping): with step size 0 PGD returns it."""
    torch.manual_seed(0)
    x = torch.full((64, 1, 8, 8), 0.5)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    x_adv = pgd_linf(model, x, lambda logits: logits.sum(1), epsilon=EPS, step_size=0.0, steps=1, start=start).x_adv
    return (x_adv - x).flatten()


def test_uniform_start_is_uniform_in_the_eps_ball():
    delta = start_of("uniform")
    assert delta.abs().max() <= EPS + 1e-6
    assert scipy.stats.kstest(delta.numpy(), scipy.stats.uniform(loc=-EPS, scale=2 * EPS).cdf).pvalue > 1e-3


def test_normal_start_is_x_plus_a_thousandth_of_standard_normal_noise():
    delta = start_of("normal")
    assert scipy.stats.kstest(delta.numpy() / 0.001, scipy.stats.norm.cdf).pvalue > 1e-3


def test_gradient_probe_is_the_maximum_over_the_iterates_not_the_last():
    """On L(x) = sigmoid(k·(Σ pixels − c)) each sign step adds 2·step to Σ pixels, and |∇L|₁ = 2·L′ peaks
    where the sum reaches c: at the 5th of 8 iterates here."""
    k, c, step, steps = 10.0, 1.0, 0.05, 8
    x = torch.full((3, 1, 1, 2), 0.3)  # Σ pixels over the iterates: 0.6, 0.7, ..., 1.3
    result = pgd_linf(torch.nn.Flatten(), x, lambda z: torch.sigmoid(k * (z.sum(1) - c)), epsilon=0.5,
                      step_size=step, steps=steps, start="none")
    l1 = [2 * k * math.exp(-k * (s - c)) / (1 + math.exp(-k * (s - c))) ** 2
          for s in (0.6 + 2 * step * i for i in range(steps))]
    assert l1.index(max(l1)) == 4 and l1[-1] < max(l1) / 2 and l1[0] < max(l1) / 2
    torch.testing.assert_close(result.max_grad_l1, torch.full((3,), max(l1)), rtol=1e-5, atol=0)
    torch.testing.assert_close(result.x_adv, x + steps * step)
