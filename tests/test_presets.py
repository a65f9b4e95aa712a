"""Presets are complete data files; flags override them."""

from __future__ import annotations

import pytest

from tuner.errors import ConfigError
from tuner.presets import list_presets, load_preset


def test_the_three_presets_exist_and_build_valid_trials():
    assert {"quick", "cifar10-small", "cifar10-wrn34"} <= set(list_presets())
    for name in list_presets():
        config = load_preset(name).trial_config(width=2, lam=6.0)
        assert config.width == 2


def test_paper_preset_is_the_reference_protocol():
    preset = load_preset("cifar10-wrn34")
    c = preset.trial_config(width=10, lam=6.0)
    assert (c.dataset, c.model, c.depth, c.method) == ("cifar10", "wrn", 34, "trades")
    assert c.epsilon == pytest.approx(8 / 255) and c.train_step_size == pytest.approx(2 / 255)
    assert (c.train_steps, c.eval_steps, c.epochs, c.batch_size) == (10, 20, 100, 128)
    assert (c.lr, c.momentum, c.weight_decay) == (0.1, 0.9, 2e-4)
    assert [round(m * c.epochs) for m in c.lr_milestones] == [75, 90]
    assert c.augment and c.normalize_mean is None


def test_flags_override_and_fractions_parse():
    config = load_preset("quick").trial_config(width=1, lam=2.0, epochs=9, epsilon="8/255", seed=None)
    assert config.epochs == 9 and config.epsilon == pytest.approx(8 / 255)
    assert config.seed == load_preset("quick").trial["seed"]
    with pytest.raises(ConfigError, match="fraction like 8/255"):
        load_preset("quick").trial_config(width=1, lam=1.0, epsilon="eight")
    with pytest.raises(ConfigError, match="unknown trial setting.*colour"):
        load_preset("quick").trial_config(width=1, lam=1.0, colour="red")
