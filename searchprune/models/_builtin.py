"""The models searchprune ships: CIFAR ResNets, the digits ResNet-8 and CIFAR VGG16-BN."""

from __future__ import annotations

from typing import TYPE_CHECKING

from searchprune.models._registry import register_model
from searchprune.models.cifar_resnet import CifarResNet
from searchprune.models.cifar_vgg import CifarVGG

if TYPE_CHECKING:
    from torch import nn

    from searchprune.config import ModelConfig

__all__ = ["LISTED_RESNET_DEPTHS"]

LISTED_RESNET_DEPTHS = (20, 32, 44, 56, 110)


def cifar_resnet_builder(depth: int):
    def build(cfg: ModelConfig, num_classes: int, in_channels: int) -> nn.Module:
        return CifarResNet(depth, num_classes, cfg.shortcut, in_channels)

    return build


for _depth in LISTED_RESNET_DEPTHS:
    register_model(f"cifar_resnet{_depth}")(cifar_resnet_builder(_depth))


@register_model("digits_resnet8")
def _digits_resnet8(cfg: ModelConfig, num_classes: int, in_channels: int) -> nn.Module:
    # 8x8 one-channel scikit-learn digits: one block per stage, spatial 8 -> 4 -> 2.
    return CifarResNet(8, num_classes, cfg.shortcut, in_channels=1)


@register_model("cifar_vgg16_bn")
def _cifar_vgg16_bn(cfg: ModelConfig, num_classes: int, in_channels: int) -> nn.Module:
    return CifarVGG(num_classes, in_channels)
