"""`python -m tuner.train` as a user runs it."""

from __future__ import annotations

import json

import pytest

from tests.helpers import assert_usage_error, run_command


def test_single_trial_writes_metrics_json(tmp_path):
    result = run_command("tuner.train", "--preset", "quick", "--width", "1", "--lam", "6", "--epochs", "2",
                         "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    epoch_lines = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["width"] == 1 and metrics["lam"] == 6 and metrics["epochs_run"] == 2
    assert 0 < metrics["test_robust_acc"] <= metrics["test_natural_acc"]


def test_unknown_model_or_dataset_in_a_preset_file(tmp_path):
    from tuner.presets import load_preset
    import yaml

    preset = load_preset("quick")
    for key, value, fragment in [("model", "vit", "unknown model 'vit'"), ("dataset", "mnist", "unknown dataset 'mnist'")]:
        path = tmp_path / f"bad-{key}.yaml"
        path.write_text(yaml.safe_dump({"trial": {**preset.trial, key: value}, "search": preset.search}))
        result = run_command("tuner.train", "--preset", str(path), "--width", "1", "--lam", "1",
                             "--out", str(tmp_path / "out"), cwd=tmp_path)
        assert_usage_error(result, fragment)
        assert not (tmp_path / "out").exists()
