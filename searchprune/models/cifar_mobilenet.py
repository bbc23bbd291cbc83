"""MobileNetV2 for 32x32 images: torchvision's network with a stride-1 stem.

torchvision's MobileNetV2 halves the resolution five times, so a 32x32 image reaches the
classifier as 1x1. Here the stem keeps the resolution (four stride-2 stages remain: 32 -> 16
-> 8 -> 4 -> 2), everything else is torchvision's class unchanged (inverted residuals,
depthwise convolutions, ReLU6, the 1280-channel last conv), so a pruned network is exactly
what a user gets from torchvision's ``mobilenet_v2``. The better-known CIFAR variant also keeps
the second stage at full resolution; at width 0.5 it costs 3.6x the multiply-adds (28 vs 7.8
M per image), too much to train and search on a CPU.
"""

from __future__ import annotations

from torch import nn
from torchvision.models import MobileNetV2

__all__ = ["cifar_mobilenet_v2"]


def cifar_mobilenet_v2(num_classes: int = 10, in_channels: int = 3,
                       width_mult: float = 1.0) -> MobileNetV2:
    """torchvision's MobileNetV2 (``width_mult``) whose stem conv has stride 1."""
    model = MobileNetV2(num_classes=num_classes, width_mult=width_mult)
    stem = model.features[0][0]
    model.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, stride=1, padding=1,
                                     bias=False)
    nn.init.kaiming_normal_(model.features[0][0].weight, mode="fan_out")
    return model
