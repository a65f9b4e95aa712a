"""APGD agrees with an independent, maintained implementation (adv-lib, a test dependency) on a TRADES checkpoint."""

from __future__ import annotations

import pytest
import torch

from tuner.core.attacks import get_attack

EPS = 0.1
TARGETS = 3  # both implementations attack the same most likely classes; 3 of 9 keeps the test short


def robust_acc(model, x, y, x_adv):
    with torch.no_grad():
        return ((model(x).argmax(1) == y) & (model(x_adv).argmax(1) == y)).float().mean().item()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["apgd-ce", "apgd-t"])
def test_robust_accuracy_within_one_point_of_adv_lib(trades_quick, name):
    from adv_lib.attacks import apgd, apgd_targeted

    model, data = trades_quick
    x, y = data.test.images, data.test.labels
    torch.manual_seed(0)
    if name == "apgd-ce":
        ours = get_attack(name)(model, x, y, epsilon=EPS)
        theirs = apgd(model, x, y, eps=EPS, norm=float("inf"), loss_function="ce", n_iter=100)
    else:
        ours = get_attack(name)(model, x, y, epsilon=EPS, targets=TARGETS)
        theirs = apgd_targeted(model, x, y, eps=EPS, norm=float("inf"), loss_function="dlr", n_iter=100,
                               num_targets=TARGETS)
    ours_acc, theirs_acc = robust_acc(model, x, y, ours), robust_acc(model, x, y, theirs)
    with torch.no_grad():
        natural = (model(x).argmax(1) == y).float().mean().item()
    assert theirs_acc < natural - 0.03, "the reference attack should find adversarial examples on this model"
    assert abs(ours_acc - theirs_acc) <= 0.01, (ours_acc, theirs_acc)
