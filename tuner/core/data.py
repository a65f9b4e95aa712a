"""Datasets by name, held in memory as tensors, with a fixed-seed validation split.

λ and the epoch are selected on `val` (carved from the training set); `test` is only evaluated
for the selected checkpoint. Images are float tensors in [0, 1] pixel space: any normalization
lives inside the model.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tuner.errors import ConfigError
from tuner.registry import Registry


@dataclass(frozen=True)
class Split:
    """Images (N, C, H, W) in [0, 1] and integer labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, part: slice) -> Split:
        return Split(self.images[part], self.labels[part])


@dataclass(frozen=True)
class Dataset:
    train: Split
    val: Split
    test: Split
    num_classes: int
    in_channels: int


CROP_PADDING = 4
# loader(*, data_dir, download) -> (train, test, num_classes)
DATASETS: Registry[Callable[..., tuple[Split, Split, int]]] = Registry("dataset")
register_dataset = DATASETS.register
list_datasets = DATASETS.names


@functools.lru_cache(maxsize=2)
def load_dataset(name: str, *, data_dir: str | None = None, download: bool = False,
                 val_fraction: float, split_seed: int) -> Dataset:
    """Load `name` and carve a validation split of `val_fraction` of train with `split_seed`.

    Cached: a process that runs trial after trial (a reused Ray worker) loads each dataset once.
    The tensors are shared, so nothing may write into them (batches are copies).
    """
    train, test, num_classes = DATASETS.get(name)(data_dir=data_dir, download=download)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(split_seed))
    n_val = max(1, round(val_fraction * len(train)))
    val_idx, train_idx = order[:n_val], order[n_val:]
    return Dataset(
        train=Split(train.images[train_idx], train.labels[train_idx]),
        val=Split(train.images[val_idx], train.labels[val_idx]),
        test=test,
        num_classes=num_classes,
        in_channels=train.images.shape[1],
    )


def batches(split: Split, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
            augment: bool = False, rank: int = 0, world_size: int = 1, equal_shards: bool = False,
            device: torch.device | str = "cpu",
            memory_format: torch.memory_format = torch.contiguous_format) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches of this worker's shard (every `world_size`-th example from `rank`), on `device`.

    Every worker must pass the same `generator` state: the shuffle is shared and the shards are
    disjoint. With `equal_shards` (training) the last `len(split) % world_size` examples of the
    order are left out, so that all workers take the same number of steps; without it the
    shards cover the split exactly once (evaluation).
    With `augment`, each image is randomly cropped back to its size after zero padding of
    `CROP_PADDING` pixels, and flipped horizontally with probability 1/2 (the CIFAR-10
    augmentation), with random draws of each worker's own.
    Batches are gathered and augmented where the split is held (a GPU-held split never leaves
    the GPU); a batch of a CPU-held split goes to a GPU through pinned memory, without blocking.
    """
    held = split.images.device
    order = torch.randperm(len(split), generator=generator) if shuffle else torch.arange(len(split))
    if equal_shards:
        order = order[:len(order) - len(order) % world_size]
    order = order[rank::world_size].to(held)
    crops = None
    if augment and generator is not None:
        crops = torch.Generator(held).manual_seed(int(torch.randint(2**62, (1,), generator=generator)) + rank)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        x, y = split.images[idx], split.labels[idx]
        if augment:
            x = random_crop_flip(x, CROP_PADDING, generator=crops)
        yield _to(x, device, memory_format), _to(y, device, torch.contiguous_format)


def _to(tensor: torch.Tensor, device: torch.device | str, memory_format: torch.memory_format) -> torch.Tensor:
    if torch.device(device).type == "cuda" and tensor.device.type == "cpu":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True, memory_format=memory_format)


def random_crop_flip(x: torch.Tensor, padding: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image random crop after zero padding, then a random horizontal flip with probability 1/2.

    Runs where `x` is (a GPU batch is augmented on the GPU, without synchronizing); `generator`
    must be on that device.
    """
    n, channels, h, w = x.shape
    on = x.device
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=on)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=on)
    rows = (dy[:, None] + torch.arange(h, device=on))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=on))[:, None, None, :]
    out = padded[torch.arange(n, device=on)[:, None, None, None], torch.arange(channels, device=on)[None, :, None, None],
                 rows, cols]
    flip = torch.rand(n, generator=generator, device=on) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


@register_dataset("digits")
def _digits(*, data_dir: str | None, download: bool) -> tuple[Split, Split, int]:
    """scikit-learn's bundled 8×8 handwritten digits (offline); a fixed 20% is the test split."""
    pixels, targets = _digits_arrays()
    images = torch.tensor(pixels, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    labels = torch.tensor(targets, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(20211206))
    n_test = len(labels) // 5
    test_idx, train_idx = order[:n_test], order[n_test:]
    return Split(images[train_idx], labels[train_idx]), Split(images[test_idx], labels[test_idx]), 10


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The digits' pixels (N, 64) in 0..16 and labels, as `sklearn.datasets.load_digits` gives them.

    Read from the CSV scikit-learn ships, without importing scikit-learn: that import costs
    about a second in every fresh trial and evaluation worker, ten times the read itself.
    """
    spec = importlib.util.find_spec("sklearn")
    bundled = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if spec else None
    if bundled is None or not bundled.is_file():  # a scikit-learn that keeps its data elsewhere
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.data, bunch.target
    table = np.loadtxt(bundled, delimiter=",")
    return table[:, :-1], table[:, -1].astype(np.int64)


CIFAR10_HELP = ("pass --data-dir pointing at torchvision's 'cifar-10-batches-py' folder (or its parent; "
                "add --download to fetch it), or at an ImageFolder tree with train/<class>/*.png and test/<class>/*.png")


@register_dataset("cifar10")
def _cifar10(*, data_dir: str | None, download: bool) -> tuple[Split, Split, int]:
    """CIFAR-10 from torchvision's python batches or from an ImageFolder tree of PNGs."""
    if not data_dir:
        raise ConfigError(f"dataset cifar10 needs its files: {CIFAR10_HELP}")
    root = Path(data_dir).expanduser()
    if root.name == "cifar-10-batches-py":
        root = root.parent
    if (root / "cifar-10-batches-py").is_dir() or download:
        return _cifar10_batches(root, download=download)
    if (root / "train").is_dir() and (root / "test").is_dir():
        train, classes = _image_folder(root / "train")
        test, test_classes = _image_folder(root / "test")
        if test_classes != classes:
            raise ConfigError(f"{root}/train and {root}/test hold different class folders; give both the same {len(classes)} classes")
        return train, test, len(classes)
    raise ConfigError(f"no CIFAR-10 found in {root}: {CIFAR10_HELP}")


def _cifar10_batches(root: Path, *, download: bool) -> tuple[Split, Split, int]:
    from torchvision.datasets import CIFAR10

    try:
        splits = [CIFAR10(str(root), train=train, download=download) for train in (True, False)]
    except (RuntimeError, OSError) as exc:
        raise ConfigError(f"could not read CIFAR-10 batches in {root} ({exc}): {CIFAR10_HELP}") from None

    def to_split(ds: CIFAR10) -> Split:
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float().div_(255)
        return Split(images.contiguous(), torch.tensor(ds.targets, dtype=torch.long))

    return to_split(splits[0]), to_split(splits[1]), len(splits[0].classes)


def _image_folder(root: Path) -> tuple[Split, list[str]]:
    from torchvision.datasets.folder import find_classes, make_dataset
    from PIL import Image, UnidentifiedImageError

    try:
        classes, class_to_idx = find_classes(str(root))
        samples = make_dataset(str(root), class_to_idx, extensions=(".png", ".jpg", ".jpeg"))
    except (FileNotFoundError, OSError) as exc:
        raise ConfigError(f"could not list images in {root} ({exc}): {CIFAR10_HELP}") from None
    try:  # PIL, not torchvision's decoder: libpng prints its errors to stderr, PIL raises them
        pixels = np.stack([np.asarray(Image.open(path).convert("RGB")) for path, _ in samples])
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise ConfigError(f"could not decode the images in {root} as equal-sized RGB pictures ({exc}): "
                          f"remove or replace the broken files") from None
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([label for _, label in samples], dtype=torch.long)
    return Split(images.float().div_(255), labels), classes
