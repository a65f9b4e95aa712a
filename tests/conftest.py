"""Shared fixtures: the offline digits data, the quick preset, a CE-trained (undefended) model, a finished search."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import models
from tuner.core.config import TrialConfig
from tuner.core.data import Dataset, batches, load_dataset
from tuner.presets import load_preset

CIFAR10_SUBSET = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-subset"


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_dataset("digits", val_fraction=0.2, split_seed=0)


@pytest.fixture(scope="session")
def quick() -> TrialConfig:
    """The quick preset at width 1, λ = 6, shortened to 2 epochs."""
    return load_preset("quick").trial_config(width=1, lam=6.0, epochs=2)


@pytest.fixture(scope="session")
def undefended(digits: Dataset) -> torch.nn.Module:
    """A cnn trained with plain cross-entropy on clean digits (natural accuracy > 0.9)."""
    torch.manual_seed(0)
    model = models.create_model("cnn", width=2, num_classes=10, in_channels=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(8):
        for x, y in batches(digits.train, 64, shuffle=True, generator=generator):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    return model


@pytest.fixture(scope="session")
def trades_quick(tmp_path_factory) -> tuple[torch.nn.Module, Dataset]:
    """A cnn of width 4 trained with TRADES (λ = 6) for 3 epochs of the quick preset, and its data."""
    from tuner.core.training import prepare, run_trial

    prepared = prepare(load_preset("quick").trial_config(width=4, lam=6.0, epochs=3))
    run_trial(prepared, work_dir=tmp_path_factory.mktemp("trades_quick"), log=None)
    return prepared.model.eval(), prepared.data


@pytest.fixture(scope="session")
def search_run(tmp_path_factory):
    """A finished `python -m tuner.search` (2 widths × 3 trials × 2 epochs; ASHA made harsh, grace 1 and keep the
    top quarter, to stop trials) in its own directory with MLflow's default store there: (run dir, its result)."""
    from tests.helpers import run_command, write_preset

    tmp = tmp_path_factory.mktemp("search")
    preset = write_preset(tmp / "harsh.yaml", grace_period=1, reduction_factor=4, concurrency=1)
    result = run_command("tuner.search", "--preset", preset, "--widths", "1,2", "--trials", "3", "--seeds", "1",
                         "--epochs", "2", "--lam-range", "0.5,20", "--progress-every", "1", "--out", str(tmp / "runs"), "--name", "it",
                         cwd=tmp)
    assert result.returncode == 0, result.stdout + result.stderr
    return tmp / "runs" / "it", result
