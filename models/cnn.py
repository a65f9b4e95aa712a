"""A small all-convolutional net whose channel counts scale with `width`, for CPU-sized presets."""

from __future__ import annotations

from torch import nn

from models.registry import register_model

BASE_CHANNELS = 4


@register_model("cnn")
def cnn(*, width: int, num_classes: int, in_channels: int, depth: int | None) -> nn.Sequential:
    """`depth` conv-BN-ReLU stages (3 by default) of 8·width·2^i channels, stride 2 after the first,
    then global average pooling and a linear classifier."""
    stages = 3 if depth is None else depth
    layers: list[nn.Module] = []
    channels_in = in_channels
    for i in range(stages):
        channels_out = BASE_CHANNELS * width * 2 ** i
        layers += [nn.Conv2d(channels_in, channels_out, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                   nn.BatchNorm2d(channels_out), nn.ReLU(inplace=True)]
        channels_in = channels_out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels_in, num_classes))
