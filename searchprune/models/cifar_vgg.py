"""VGG16-BN for 32x32 inputs: 13 conv3x3 (with bias) + BN + ReLU, five max-pools, one Linear."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["VGG16_CFG", "CifarVGG"]

VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


class CifarVGG(nn.Module):
    """``features`` (conv/BN/ReLU/max-pool) -> flatten -> ``classifier`` (a single Linear).

    The classifier sees ``cfg[-2] x 1 x 1`` features, so inputs must be 32x32 for VGG16.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        cfg: Sequence[int | str] = VGG16_CFG,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_channels
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            width = int(item)
            layers += [nn.Conv2d(prev, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
            prev = width
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(prev, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))
