"""A search plan merges preset and flags and rejects what cannot run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuner.errors import ConfigError
from tuner.plan import TrialResources, build_plan, parse_lam_range, parse_widths
from tuner.presets import PAPER_PRESET, load_preset


def plan(preset="quick", **search):
    return build_plan(load_preset(preset), name="t", out=Path("runs"), search_overrides=search, trial_overrides={})


def test_widths_are_sorted_positive_and_given_once():
    assert parse_widths("10,1, 4") == [1, 4, 10]
    for bad in ("1,a", "0", "", "-2", "1,,2", "1.5"):
        with pytest.raises(ConfigError, match="--widths takes comma-separated positive integers"):
            parse_widths(bad)
    with pytest.raises(ConfigError, match="width 4 more than once"):
        parse_widths("1,4,4")
    with pytest.raises(ConfigError, match="--predict takes comma-separated positive integers"):
        parse_widths("15,x", option="--predict")  # the widths to recommend λ for, read alike


def test_data_dirs_are_made_absolute_in_the_driver():
    """Trials run in other working directories: a relative --data-dir must not reach them."""
    p = build_plan(load_preset("cifar10-small"), name="t", out=Path("runs"), search_overrides={},
                   trial_overrides={"data_dir": "data/cifar"})
    assert p.trial.data_dir == str(Path("data/cifar").resolve())


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
    ({"gpus_per_trial": 1.5}, "--workers-per-trial 2"), ({"initial_lams": "50"}, "--lam-start"),
    ({"concurrency": 0}, "--concurrency"), ({"workers_per_trial": 0}, "--workers-per-trial"),
    ({"workers_per_trial": 3}, "--batch-size"), ({"workers_per_trial": 2, "gpus_per_trial": 1}, "one whole GPU"),
    ({"resources": [{"min_width": 2, "workers": 1, "cpus": 1, "gpus": 0}]}, "width 1"),
    ({"resources": [{"min_width": 1, "workers": "two", "cpus": 1, "gpus": 0}]}, "whole numbers"),
    ({"resources": [{"min_width": 1, "workers": 1, "cpus": "many", "gpus": 0}]}, "workers, cpus and gpus"),
])
def test_invalid_settings_name_the_flag(search, fragment):
    with pytest.raises(ConfigError, match=fragment):
        plan(**search)


def test_paper_preset_shares_gpus_for_narrow_widths_and_trains_wide_ones_data_parallel():
    p = plan(PAPER_PRESET, widths="1,4,10,20")
    assert p.resources == {1: TrialResources(1, 4, 0.5), 4: TrialResources(1, 4, 0.5),
                           10: TrialResources(1, 4, 1), 20: TrialResources(4, 16, 4)}
    assert p.resources[20].per_worker == {"CPU": 4, "GPU": 1}
    described = [line.strip() for line in p.describe().splitlines()]
    assert "w1: 1 worker, 4 CPU, 0.5 GPU (up to 2 trials per GPU) per trial" in described
    assert "w20: 4 data-parallel workers × (4 CPU, 1 GPU) per trial" in described


def test_resource_flags_override_every_width():
    p = plan(PAPER_PRESET, widths="1,20", workers_per_trial=2, gpus_per_trial=2, cpus_per_trial=8)
    assert set(p.resources.values()) == {TrialResources(2, 8, 2)}


def test_concurrency_is_what_fits_and_data_parallel_trials_never_exceed_it():
    p = plan(PAPER_PRESET, widths="1,10,20")
    cluster = {"CPU": 64, "GPU": 8}
    assert [p.concurrency_for(w, cluster) for w in (1, 10, 20)] == [16, 8, 2]
    assert p.concurrency_for(20, {"CPU": 64, "GPU": 2}) == 1  # none fits yet: one waits for the autoscaler
    capped = plan(PAPER_PRESET, widths="1,20", concurrency=3)
    assert capped.concurrency_for(1, cluster) == 3 and capped.concurrency_for(20, cluster) == 2
    # one-worker trials may exceed what fits now (an autoscaler grows for them), data-parallel ones not
    assert plan(PAPER_PRESET, widths="1,20", concurrency=40).concurrency_for(1, cluster) == 40
    assert plan(widths="1", workers_per_trial=2, cpus_per_trial=2).concurrency_for(1, {"CPU": 5}) == 2


def test_a_trial_that_can_never_run_on_this_machine_is_refused():
    p = plan(PAPER_PRESET, widths="1,20")
    p.check_fits({"CPU": 16, "GPU": 4})
    with pytest.raises(ConfigError, match="width-20 trial needs 16 CPU and 4 GPU .*--gpus-per-trial"):
        p.check_fits({"CPU": 16, "GPU": 1})


def test_storage_paths_are_made_absolute_and_uris_kept():
    assert plan(storage="shared/ray").tune_storage == str(Path("shared/ray").resolve() / "t")
    assert plan(storage="s3://bucket/prefix/").tune_storage == "s3://bucket/prefix/t"
