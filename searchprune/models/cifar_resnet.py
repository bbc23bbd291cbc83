"""The CIFAR ResNet of He et al. (2016): depth 6n+2, three stages of 16/32/64 channels.

One definition serves both shortcut kinds: ``"pad"`` (option A, parameter-free
:class:`~searchprune.models._layers.IndexShortcut`) and ``"projection"`` (1x1 conv + BN).
Parameter names match the classic checkpoints (``conv1``, ``layer1.0.bn2``, ``linear``...).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from searchprune.models._layers import IndexShortcut

__all__ = ["SHORTCUTS", "BasicBlock", "CifarResNet"]

SHORTCUTS = ("pad", "projection")


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def _shortcut(in_channels: int, out_channels: int, stride: int, kind: str) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    if kind == "pad":
        return IndexShortcut(in_channels, out_channels, stride=stride)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class BasicBlock(nn.Module):
    """``relu2(bn2(conv2(relu1(bn1(conv1(x))))) + shortcut(x))``."""

    last_bn = "bn2"
    shortcut_name = "shortcut"

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, shortcut: str = "projection"
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = _shortcut(in_channels, out_channels, stride, shortcut)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return self.relu2(out)


class CifarResNet(nn.Module):
    """CIFAR ResNet with ``(depth - 2) / 6`` basic blocks per stage.

    Args:
        depth: 6n+2 (20, 32, 44, 56, 110, ...; 8 for the digits model).
        num_classes: outputs of ``linear``.
        shortcut: ``"pad"`` (option A) or ``"projection"`` (1x1 conv + BN).
        in_channels: image channels (3 for CIFAR, 1 for digits).
        widths: channels of the stem/stage 1, stage 2 and stage 3.
    """

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        shortcut: str = "projection",
        in_channels: int = 3,
        widths: Sequence[int] = (16, 32, 64),
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
        n = (depth - 2) // 6
        self.depth = depth
        self.conv1 = _conv3x3(in_channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        stages = []
        prev = widths[0]
        for s, width in enumerate(widths):
            blocks = []
            for i in range(n):
                stride = 2 if (s > 0 and i == 0) else 1
                blocks.append(BasicBlock(prev, width, stride, shortcut))
                prev = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.linear = nn.Linear(prev, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(self.flatten(self.avgpool(x)))
