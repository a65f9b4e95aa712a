"""APGD follows the published algorithm: its step-size checkpoints, its losses, its threat model, its hygiene."""

from __future__ import annotations

import math

import pytest
import torch

import models
from tuner.core.attacks import (apgd, ce_loss, checkpoint_schedule, dlr_loss, get_attack, list_attacks, margin,
                                targeted_dlr_loss)
from tuner.errors import ConfigError

EPS = 0.1


@pytest.fixture
def batch(digits):
    return digits.val.images[:64], digits.val.labels[:64]


def test_checkpoints_for_100_steps_are_the_papers():
    assert checkpoint_schedule(100) == [22, 41, 57, 70, 80, 87, 93, 99]


@pytest.mark.parametrize("steps", [1, 5, 10, 20, 50, 200])
def test_checkpoints_scale_with_the_number_of_steps(steps):
    points = checkpoint_schedule(steps)
    assert points[0] == math.ceil(0.22 * steps)
    assert points == sorted(set(points)) and points[-1] <= steps
    periods = [b - a for a, b in zip([0, *points], points)]
    assert all(p >= 1 for p in periods)
    assert periods == sorted(periods, reverse=True) or steps < 20  # periods shrink (rounding aside)


def test_dlr_values_on_hand_made_logits():
    logits = torch.tensor([[3.0, 1.0, 0.5, -1.0], [3.0, 1.0, 0.5, -1.0], [2.0, 2.0, 0.0, 0.0]])
    y = torch.tensor([0, 2, 1])
    # -(z_y - max_{i≠y} z_i) / (z_π1 - z_π3): correct (negative), misclassified (positive), a tie (zero)
    torch.testing.assert_close(dlr_loss(logits, y), torch.tensor([-2.0 / 2.5, 2.5 / 2.5, 0.0]))
    torch.testing.assert_close(margin(logits, y), torch.tensor([2.0, -2.5, 0.0]))


def test_targeted_dlr_values_on_hand_made_logits():
    logits = torch.tensor([[4.0, 2.0, 1.0, 0.0, -1.0], [4.0, 2.0, 1.0, 0.0, -1.0]])
    y, target = torch.tensor([0, 0]), torch.tensor([1, 4])
    # -(z_y - z_t) / (z_π1 - (z_π3 + z_π4) / 2) = -(4 - z_t) / (4 - 0.5)
    torch.testing.assert_close(targeted_dlr_loss(logits, y, target), torch.tensor([-2.0 / 3.5, -5.0 / 3.5]))


def test_dlr_is_invariant_to_shifting_and_scaling_the_logits():
    logits, y = torch.randn(32, 10, generator=torch.Generator().manual_seed(0)), torch.arange(32) % 10
    target = (y + 1) % 10
    for loss in (lambda z: dlr_loss(z, y), lambda z: targeted_dlr_loss(z, y, target)):
        torch.testing.assert_close(loss(3 * logits + 7), loss(logits), rtol=1e-4, atol=1e-5)


def test_the_registry_holds_every_attack_by_name():
    assert {"pgd", "apgd-ce", "apgd-dlr", "apgd-t"} <= set(list_attacks())
    with pytest.raises(ConfigError, match="unknown attack 'apgd'"):
        get_attack("apgd")


@pytest.mark.parametrize("name", ["pgd", "apgd-ce", "apgd-dlr", "apgd-t"])
def test_points_stay_in_the_eps_ball_and_pixel_range(undefended, batch, name):
    x, y = batch
    x_adv = get_attack(name)(undefended, x, y, epsilon=EPS, steps=5)
    assert x_adv.shape == x.shape
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() > EPS / 2, "the attack did not move"


@pytest.mark.parametrize("name", ["apgd-ce", "apgd-dlr", "apgd-t"])
def test_apgd_breaks_an_undefended_model(undefended, batch, name):
    x, y = batch
    torch.manual_seed(0)
    with torch.no_grad():
        fooled = undefended(get_attack(name)(undefended, x, y, epsilon=0.2, steps=20)).argmax(1) != y
    assert fooled.float().mean() > 0.9


def test_apgd_returns_the_lowest_margin_point_it_saw(undefended, batch):
    x, y = batch
    torch.manual_seed(0)
    x_adv, found = apgd(undefended, x, y, loss=ce_loss, epsilon=0.03, steps=10)
    with torch.no_grad():
        torch.testing.assert_close(margin(undefended(x_adv), y), found, rtol=1e-4, atol=1e-4)
        assert (found <= margin(undefended(x), y) + 1e-4).float().mean() > 0.9
    assert (found < 0).any() and (found >= 0).any(), "pick an epsilon where some but not all examples break"


def test_targeted_attack_needs_four_classes(batch):
    model = models.create_model("cnn", width=1, num_classes=3, in_channels=1)
    x, y = batch
    with pytest.raises(ConfigError, match="apgd-t needs at least 4 classes"):
        get_attack("apgd-t")(model, x, y % 3, epsilon=EPS)


@pytest.mark.parametrize("name", ["apgd-ce", "apgd-t"])
@pytest.mark.parametrize("training", [True, False])
def test_mode_restored_no_parameter_gradient_and_running_stats_untouched(undefended, batch, name, training):
    x, y = batch
    undefended.train(training)
    stats = {k: v.clone() for k, v in undefended.state_dict().items()}
    seen_modes = []
    hook = undefended[0].register_forward_hook(lambda m, i, o: seen_modes.append(m.training))
    try:
        get_attack(name)(undefended, x, y, epsilon=EPS, steps=3, **({"targets": 2} if name == "apgd-t" else {}))
    finally:
        hook.remove()
        mode_after = undefended.training
        undefended.eval()
    assert seen_modes and not any(seen_modes), "the attack must run the model in eval mode"
    assert mode_after is training
    assert all(p.grad is None for p in undefended.parameters())
    assert all(torch.equal(v, undefended.state_dict()[k]) for k, v in stats.items())
