"""APGD follows the published algorithm: its step-size checkpoints, its losses, its threat model, its hygiene."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import models
from tuner.core import attacks
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


class Identity(torch.nn.Module):
    """Logits = the input (one logit per pixel), recording every batch it is called on."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))
        self.calls: list[torch.Tensor] = []

    def forward(self, x):
        self.calls.append(x.detach().clone())
        return x


def reference_apgd(start: np.ndarray, x: np.ndarray, centre: np.ndarray, *, epsilon: float, steps: int) -> list:
    """The iterates of APGD (Croce & Hein 2020, Algorithm 1) for one example maximizing f(p) = −‖p − centre‖²,
    written from the paper: first step 2ε without momentum, then momentum 0.75; at each checkpoint the step
    halves if at most 75% of the period's steps raised f, or if it was not halved last time and the best f
    did not improve, and the iterate then restarts from the best point."""
    lower, upper = np.clip(x - epsilon, 0, 1), np.clip(x + epsilon, 0, 1)

    def f(p):
        return -np.sum((p - centre) ** 2)

    def grad(p):
        return -2 * (p - centre)

    current = previous = best = start
    value = best_value = best_at_check = f(start)
    eta, rises, last, halved, iterates = 2 * epsilon, 0, 0, False, []
    checkpoints = set(checkpoint_schedule(steps))
    for k in range(1, steps + 1):
        z = np.clip(current + eta * np.sign(grad(current)), lower, upper)
        alpha = 1.0 if k == 1 else 0.75
        new = np.clip(current + alpha * (z - current) + (1 - alpha) * (current - previous), lower, upper)
        iterates.append(new)
        rises += f(new) > value
        previous, current, value = current, new, f(new)
        if value > best_value:
            best, best_value = new, value
        if k in checkpoints:
            halve = rises <= 0.75 * (k - last) or (not halved and best_value <= best_at_check)
            if halve:
                eta, current, previous, value = eta / 2, best, best, best_value
            halved, best_at_check, last, rises = halve, best_value, k, 0
    return iterates


def test_apgd_iterates_as_the_published_algorithm_and_returns_its_lowest_margin_point():
    """On logits = input and a concave loss peaking inside the ball, the sign steps overshoot, so the step halves
    and restarts from the best point; no example is ever misclassified (class 0 leads by more than 2ε)."""
    generator = torch.Generator().manual_seed(0)
    n, d, steps = 6, 5, 20
    x = torch.rand(n, d, generator=generator, dtype=torch.float64) * 0.4 + 0.2
    x[:, 0] = 0.9
    y = torch.zeros(n, dtype=torch.long)
    centre = x + EPS * (torch.rand(n, d, generator=generator, dtype=torch.float64) * 1.6 - 0.8)
    model = Identity()
    torch.manual_seed(0)
    best_x, found = apgd(model, x, y, loss=lambda logits, y, t: -((logits - centre) ** 2).sum(1), epsilon=EPS,
                         steps=steps)
    start, *iterates = model.calls
    assert len(iterates) == steps
    for i in range(n):
        expected = reference_apgd(start[i].numpy(), x[i].numpy(), centre[i].numpy(), epsilon=EPS, steps=steps)
        np.testing.assert_allclose(np.stack([p[i].numpy() for p in iterates]), np.stack(expected), atol=1e-6)
    points = torch.stack(model.calls)  # (steps + 1, n, d): the start, then every iterate
    margins = points[..., 0] - points[..., 1:].amax(-1)
    lowest = margins.argmin(0)  # the first of equal lowest margins
    torch.testing.assert_close(best_x, points[lowest, torch.arange(n)])
    torch.testing.assert_close(found.double(), margins.amin(0), atol=1e-6, rtol=0)
    assert len(set(lowest.tolist())) > 1, "the lowest-margin point is not the same iterate for every example"


def test_random_start_is_on_the_boundary_of_the_eps_ball():
    x = torch.full((200, 16), 0.5)
    model = Identity()
    torch.manual_seed(0)
    apgd(model, x, torch.zeros(200, dtype=torch.long), loss=ce_loss, epsilon=EPS, steps=1)
    offset = (model.calls[0] - x).abs()
    torch.testing.assert_close(offset.amax(1), torch.full((200,), EPS))
    assert 0.4 < offset.mean().item() / EPS < 0.6, "uniform directions, scaled to the boundary: not a corner"


def test_targets_are_the_next_most_likely_classes_on_the_clean_input(undefended, batch, monkeypatch):
    x, y = batch
    seen = []
    real = attacks.apgd

    def spy(model, x, y, *, target, **options):
        seen.append((y.clone(), target.clone()))
        return real(model, x, y, target=target, **options)

    monkeypatch.setattr(attacks, "apgd", spy)
    with torch.no_grad():
        logits = undefended(x)
    torch.manual_seed(0)
    get_attack("apgd-t")(undefended, x[:1].expand(4, -1, -1, -1), y[:1].expand(4), epsilon=1e-4, steps=1, targets=3)
    ranked = [c for c in logits[0].argsort(descending=True).tolist() if c != y[0]]
    assert [target[0].item() for _, target in seen] == ranked[:3], "the 2nd, 3rd and 4th most likely classes"
