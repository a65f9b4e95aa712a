"""WideResNet-depth-k as in the TRADES code: pre-activation BasicBlocks, channels 16, 16k, 32k, 64k.

Unlike the TRADES file, there is no unused `sub_block1`: every block defined is used, so
WRN-34-10 has the 46.16 M parameters the paper reports.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models.registry import register_model
from tuner.errors import ConfigError


class BasicBlock(nn.Module):
    """BN-ReLU-conv3×3, BN-ReLU-conv3×3, with a 1×1 conv shortcut when the shape changes."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = (None if in_planes == out_planes and stride == 1
                         else nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        out = self.conv2(self.relu(self.bn2(self.conv1(pre))))
        # As in TRADES: an identity shortcut adds the block input, a projection takes the
        # pre-activated input.
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    def __init__(self, *, depth: int, width: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ConfigError(f"WideResNet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 34, ...), got {depth}")
        blocks = (depth - 4) // 6
        channels = [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, stride=1, padding=1, bias=False)
        stages = []
        for stage, stride in enumerate((1, 2, 2)):
            stages += [BasicBlock(channels[stage] if i == 0 else channels[stage + 1], channels[stage + 1],
                                  stride if i == 0 else 1) for i in range(blocks)]
        self.blocks = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn(self.blocks(self.conv1(x))))
        return self.fc(self.pool(out).flatten(1))


@register_model("wrn")
def wrn(*, width: int, num_classes: int, in_channels: int, depth: int | None) -> WideResNet:
    """WRN-depth-width; depth 34 by default (the TRADES / Wu et al. family)."""
    return WideResNet(depth=34 if depth is None else depth, width=width, num_classes=num_classes,
                      in_channels=in_channels)
