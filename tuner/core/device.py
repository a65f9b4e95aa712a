"""Where and how a trial computes: device, numeric precision, memory format, compilation, data placement.

- `precision` ("fp32" or "bf16") is the autocast dtype of the training step, its attack
  included; evaluation attacks run in `eval_precision`, fp32 unless asked, because
  low-precision input gradients can mask an attack. bf16 keeps fp32's exponent range, so it
  needs no loss scaling (fp16 would, and is refused). On CUDA, fp32 convolutions use TF32
  tensor cores, PyTorch's default, which also keeps fp32's exponent range.
- `channels_last` holds the model's weights and its input batches in NHWC (tensor-core
  convolutions prefer it); `compile` compiles the model's forward in place with `torch.compile`
  (the attack loops stay eager; they only call the model).
- On CUDA: cudnn.benchmark picks the fastest convolution for each shape; a dataset that fits in
  `GPU_DATA_SHARE` of the GPU's memory is held on the GPU, where its batches are gathered and
  augmented (`data.batches`); a larger one stays in CPU memory and each batch is copied to the
  GPU from pinned memory without blocking.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator

import torch
from torch import nn

from tuner.core.data import Dataset, Split
from tuner.errors import ConfigError

GPU_DATA_SHARE = 0.1  # a dataset up to this share of the GPU's memory is held on it (CIFAR-10: 0.74 GB)


def resolve_device(name: str) -> torch.device:
    """"auto" is the GPU if there is one, else the CPU; ConfigError for a device this machine does not have."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}: pass --device auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not (torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()):
        raise ConfigError(f"device {name} is not available here ({torch.cuda.device_count()} CUDA GPU(s)): "
                          f"pass --device auto or cpu")
    return device


def device_memory(device: torch.device) -> int:
    """Bytes of memory of `device`: the GPU's total, or the machine's physical memory for the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_precision(precision: str, device: torch.device, *, setting: str = "precision") -> None:
    """Raise ConfigError if `device` cannot compute in `precision` (bf16 needs compute capability 8.0+ on CUDA)."""
    if precision == "bf16" and device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 0):
        name = torch.cuda.get_device_name(device)
        raise ConfigError(f"{setting} bf16 needs a GPU with bfloat16 tensor cores (compute capability 8.0+, "
                          f"e.g. A100, H100); {name} has none: set {setting}: fp32 in the preset")


@contextlib.contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """The block computes in `precision`: bf16 autocast, or plain fp32 (autocast off, even inside an outer one)."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        yield


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def place_model(model: nn.Module, device: torch.device, *, channels_last: bool, compile: bool) -> nn.Module:
    """`model` on `device` in the memory format asked for, its forward compiled if asked (state dict keys unchanged)."""
    model = model.to(device, memory_format=memory_format(channels_last))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if compile:
        model.compile()
    return model


def place_data(data: Dataset, device: torch.device) -> Dataset:
    """The dataset on the GPU if it fits in `GPU_DATA_SHARE` of the GPU's memory; otherwise (and on a CPU) as it is."""
    splits = (data.train, data.val, data.test)
    size = sum(s.images.nbytes + s.labels.nbytes for s in splits)
    if device.type != "cuda" or size > GPU_DATA_SHARE * torch.cuda.get_device_properties(device).total_memory:
        return data
    return dataclasses.replace(data, **{name: Split(s.images.to(device), s.labels.to(device))
                                        for name, s in zip(("train", "val", "test"), splits)})
