"""PGD stays in the threat model, actually attacks, and leaves the model as it found it."""

from __future__ import annotations

import pytest
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
