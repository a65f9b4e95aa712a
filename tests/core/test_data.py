"""Datasets load offline, in [0, 1], with a fixed validation split carved from train."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torchvision.io import write_png

from tests.conftest import CIFAR10_SUBSET
from tuner.core import data
from tuner.core.data import CROP_PADDING, Split, batches, load_dataset, random_crop_flip
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


def digit_rows(images: torch.Tensor, labels: torch.Tensor) -> list[tuple[float, ...]]:
    """Each example as (its 64 pixels in 0..16, its label), in sorted order."""
    table = torch.cat([(images.flatten(1) * 16).round(), labels[:, None].to(images.dtype)], dim=1)
    return sorted(map(tuple, table.tolist()))


@pytest.mark.parametrize("bundled_csv_found", [True, False])
def test_digits_are_scikit_learns_own_examples(bundled_csv_found, monkeypatch):
    from sklearn.datasets import load_digits

    if not bundled_csv_found:  # a scikit-learn that keeps its data elsewhere: load_digits itself is used
        monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    train, test, num_classes = data.DATASETS.get("digits")(data_dir=None, download=False)
    bunch = load_digits()
    expected = digit_rows(torch.tensor(bunch.images, dtype=torch.float32) / 16, torch.tensor(bunch.target))
    assert num_classes == 10
    assert digit_rows(torch.cat([train.images, test.images]), torch.cat([train.labels, test.labels])) == expected


def test_loading_the_digits_does_not_import_scikit_learn():
    """Every fresh trial and evaluation worker loads the digits: importing scikit-learn would cost each about 1 s."""
    code = ("import sys; from tuner.core.data import load_dataset; load_dataset('digits', val_fraction=0.2, "
            "split_seed=0); print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_sharded_batches_cover_the_split_exactly_once(digits):
    seen = torch.cat([y for rank in range(3) for _, y in batches(digits.val, 50, rank=rank, world_size=3)])
    assert len(seen) == len(digits.val)
    assert torch.equal(seen.sort().values, digits.val.labels.sort().values)


def test_crop_flip_keeps_shape_and_pixels():
    x = torch.rand(16, 3, 32, 32)
    out = random_crop_flip(x, 4, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)


def crop_of(image: torch.Tensor, source: torch.Tensor) -> tuple[int, int, bool] | None:
    """(dy, dx, flipped) such that `image` is the window at (dy, dx) of `source` zero-padded by CROP_PADDING,
    mirrored left-right if flipped; None if no window matches."""
    padded = torch.zeros(source.shape[0], source.shape[1] + 2 * CROP_PADDING, source.shape[2] + 2 * CROP_PADDING)
    padded[:, CROP_PADDING:-CROP_PADDING, CROP_PADDING:-CROP_PADDING] = source
    h, w = source.shape[1:]
    for dy in range(2 * CROP_PADDING + 1):
        for dx in range(2 * CROP_PADDING + 1):
            window = padded[:, dy:dy + h, dx:dx + w]
            for flipped in (False, True):
                if torch.equal(image, window.flip(-1) if flipped else window):
                    return dy, dx, flipped
    return None


def test_each_crop_is_a_window_of_its_own_zero_padded_image_at_every_offset():
    x = torch.rand(256, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    out = random_crop_flip(x, CROP_PADDING, generator=torch.Generator().manual_seed(0))
    found = [crop_of(crop, source) for crop, source in zip(out, x)]
    assert None not in found, f"image {found.index(None)} is no crop of its source"
    dys, dxs, flips = zip(*found)
    assert set(dys) == set(dxs) == set(range(2 * CROP_PADDING + 1)), "every offset in the padding occurs"
    assert set(flips) == {False, True} and any(dy != dx for dy, dx in zip(dys, dxs))


def test_augmented_batches_keep_each_image_with_its_own_label():
    images = torch.rand(40, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    split = Split(images, torch.arange(40))  # the label names the source image
    seen = []
    for x, y in batches(split, 16, shuffle=True, generator=torch.Generator().manual_seed(0), augment=True):
        seen += y.tolist()
        assert all(crop_of(crop, images[label]) is not None for crop, label in zip(x, y))
    assert sorted(seen) == list(range(40))


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


def test_cifar10_image_folder_round_trips_pixels_and_labels(tmp_path):
    """PNGs written with torchvision.io load back bit for bit in [0, 1], labelled by sorted class folder."""
    classes = ["cat", "bird", "dog"]  # written out of order: labels follow the sorted names
    generator = torch.Generator().manual_seed(0)
    written: dict[str, list[tuple[bytes, int]]] = {"train": [], "test": []}
    for split, per_class in (("train", 4), ("test", 2)):
        for name in classes:
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(per_class):
                image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=generator)
                write_png(image, str(tmp_path / split / name / f"{i}.png"))
                written[split].append((image.numpy().tobytes(), sorted(classes).index(name)))
    data = load_dataset("cifar10", data_dir=str(tmp_path), val_fraction=0.25, split_seed=0)
    assert data.num_classes == 3 and data.in_channels == 3 and (len(data.train), len(data.val)) == (9, 3)

    def loaded(*splits):
        images = torch.cat([s.images for s in splits])
        assert images.dtype == torch.float32 and images.min() >= 0 and images.max() <= 1
        as_bytes = (images * 255).round().to(torch.uint8)
        assert torch.equal(as_bytes.float() / 255, images), "pixels are exactly k/255"
        return sorted(zip((b.numpy().tobytes() for b in as_bytes), torch.cat([s.labels for s in splits]).tolist()))

    assert loaded(data.train, data.val) == sorted(written["train"])
    assert loaded(data.test) == sorted(written["test"])


@pytest.mark.skipif(not CIFAR10_SUBSET.is_dir(),
                    reason=f"the real CIFAR-10 subset is not at {CIFAR10_SUBSET} (../shared is absent here, e.g. "
                           "in a fresh clone or the Docker image); the PNG round-trip test covers the loader")
def test_cifar10_image_folder_loads_the_shared_subset():
    data = load_dataset("cifar10", data_dir=str(CIFAR10_SUBSET), val_fraction=0.1, split_seed=0)
    assert data.num_classes == 10 and data.in_channels == 3
    assert len(data.train) + len(data.val) == 10_000 and len(data.test) == 2_000
    assert data.train.images.shape[1:] == (3, 32, 32)
    assert data.train.images.dtype == torch.float32
    assert 0 <= data.train.images.min() and data.train.images.max() <= 1
    assert torch.bincount(data.test.labels).tolist() == [200] * 10
    assert data.train.images.std() > 0.1, "real photographs, not a constant"
