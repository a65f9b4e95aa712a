"""Datasets load offline, in [0, 1], with a fixed validation split carved from train."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import CIFAR10_SUBSET
from tuner.core.data import batches, load_dataset, random_crop_flip
from tuner.errors import ConfigError


def test_digits_in_pixel_range_with_disjoint_fixed_splits(digits):
    assert digits.num_classes == 10 and digits.in_channels == 1
    assert digits.train.images.shape[1:] == (1, 8, 8)
    for split in (digits.train, digits.val, digits.test):
        assert split.images.min() >= 0 and split.images.max() <= 1
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    assert len(digits.val) == round(0.2 * (len(digits.train) + len(digits.val)))
    rows = lambda s: {tuple(r.tolist()) for r in s.images.flatten(1)}  # noqa: E731
    assert not rows(digits.val) & rows(digits.test) - rows(digits.train)
    again = load_dataset("digits", val_fraction=0.2, split_seed=0)
    assert torch.equal(again.val.labels, digits.val.labels) and torch.equal(again.val.images, digits.val.images)
    other = load_dataset("digits", val_fraction=0.2, split_seed=1)
    assert not torch.equal(other.val.images, digits.val.images)
    assert torch.equal(other.test.images, digits.test.images), "the test split must not depend on the val seed"


def test_sharded_batches_cover_the_split_exactly_once(digits):
    seen = torch.cat([y for rank in range(3) for _, y in batches(digits.val, 50, rank=rank, world_size=3)])
    assert len(seen) == len(digits.val)
    assert torch.equal(seen.sort().values, digits.val.labels.sort().values)


def test_crop_flip_keeps_shape_and_pixels():
    x = torch.rand(16, 3, 32, 32)
    out = random_crop_flip(x, 4, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)


def test_unknown_dataset_and_missing_directory_say_how_to_fix():
    with pytest.raises(ConfigError, match="unknown dataset 'mnist'.*cifar10, digits"):
        load_dataset("mnist", val_fraction=0.2, split_seed=0)
    with pytest.raises(ConfigError, match="no CIFAR-10 found in /nonexistent.*--data-dir"):
        load_dataset("cifar10", data_dir="/nonexistent", val_fraction=0.2, split_seed=0)
    with pytest.raises(ConfigError, match="needs its files.*--data-dir"):
        load_dataset("cifar10", val_fraction=0.2, split_seed=0)


def test_malformed_image_folder_is_a_config_error(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split / "cat").mkdir(parents=True)
        (tmp_path / split / "cat" / "0.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match="could not decode"):
        load_dataset("cifar10", data_dir=str(tmp_path), val_fraction=0.2, split_seed=0)


@pytest.mark.skipif(not CIFAR10_SUBSET.is_dir(), reason=f"real CIFAR-10 subset not found at {CIFAR10_SUBSET}")
def test_cifar10_image_folder_loads_the_shared_subset():
    data = load_dataset("cifar10", data_dir=str(CIFAR10_SUBSET), val_fraction=0.1, split_seed=0)
    assert data.num_classes == 10 and data.in_channels == 3
    assert len(data.train) + len(data.val) == 10_000 and len(data.test) == 2_000
    assert data.train.images.shape[1:] == (3, 32, 32)
    assert data.train.images.dtype == torch.float32
    assert 0 <= data.train.images.min() and data.train.images.max() <= 1
    assert torch.bincount(data.test.labels).tolist() == [200] * 10
    assert data.train.images.std() > 0.1, "real photographs, not a constant"
