"""A search plan merges preset and flags and rejects what cannot run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuner.core.errors import ConfigError
from tuner.plan import build_plan, parse_lam_range, parse_widths
from tuner.presets import load_preset


def plan(**search):
    return build_plan(load_preset("quick"), name="t", out=Path("runs"), search_overrides=search, trial_overrides={})


def test_widths_are_sorted_unique_and_positive():
    assert parse_widths("10,1,4,4") == [1, 4, 10]
    for bad in ("1,a", "0", "", "-2"):
        with pytest.raises(ConfigError, match="--widths"):
            parse_widths(bad)


def test_lam_range_is_ordered_and_positive():
    assert parse_lam_range("0.5,30") == (0.5, 30.0) and parse_lam_range([1, 6]) == (1.0, 6.0)
    for bad in ("5,1", "0,3", "1", "a,b"):
        with pytest.raises(ConfigError, match="--lam-range"):
            parse_lam_range(bad)


def test_flags_override_the_preset_and_the_base_trial_is_the_narrowest():
    p = plan(widths="10,4", trials=7, lam_range="2,9")
    assert p.widths == [4, 10] and p.trials == 7 and (p.lam_low, p.lam_high) == (2.0, 9.0)
    assert p.trial.width == 4 and p.run_dir == Path("runs/t").resolve() and p.study_name(10) == "t-w10"
    assert plan().widths == load_preset("quick").search["widths"]


@pytest.mark.parametrize("search, fragment", [
    ({"trials": 0}, "--trials"), ({"sampler": "cmaes"}, "--sampler"), ({"cpus_per_trial": 0}, "--cpus-per-trial"),
    ({"gpus_per_trial": 1.5}, "whole number"), ({"initial_lams": "50"}, "--lam-start"),
    ({"concurrency": 0}, "--concurrency"),
])
def test_invalid_settings_name_the_flag(search, fragment):
    with pytest.raises(ConfigError, match=fragment):
        plan(**search)
