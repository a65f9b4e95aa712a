"""Models by name, as timm registers them: `create_model("wrn", width=10, num_classes=10, in_channels=3)`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from tuner.errors import ConfigError
from tuner.registry import Registry

# builder(*, width, num_classes, in_channels, depth) -> nn.Module
MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
register_model = MODELS.register
list_models = MODELS.names


def create_model(name: str, *, width: int, num_classes: int, in_channels: int, depth: int | None = None,
                 normalize: tuple[Sequence[float], Sequence[float]] | None = None) -> nn.Module:
    """Build model `name` of widening factor `width`.

    `normalize=(mean, std)` puts per-channel input normalization inside the model, so attacks
    and ε stay in [0, 1] pixel space.
    """
    builder = MODELS.get(name)
    if not isinstance(width, int) or width <= 0:
        raise ConfigError(f"width must be a positive integer, got {width!r}")
    model = builder(width=width, num_classes=num_classes, in_channels=in_channels, depth=depth)
    if normalize is None:
        return model
    mean, std = normalize
    if len(mean) != in_channels or len(std) != in_channels:
        raise ConfigError(f"normalize mean and std need {in_channels} values each (one per input channel)")
    return Normalized(model, mean, std)


class Normalized(nn.Module):
    """(x - mean) / std per channel, then the wrapped model."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)
