"""The models searchprune ships: CIFAR ResNets, the digits ResNet-8, CIFAR VGG16-BN and a
CIFAR MobileNetV2."""

from __future__ import annotations

from typing import TYPE_CHECKING

from searchprune.errors import ModelError
from searchprune.models._registry import register_model
from searchprune.models.cifar_mobilenet import cifar_mobilenet_v2
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


@register_model("cifar_mobilenet_v2")
def _cifar_mobilenet_v2(cfg: ModelConfig, num_classes: int, in_channels: int) -> nn.Module:
    # model.kwargs: width_mult only (default 1.0).
    kwargs = cfg.kwargs or {}
    unknown = sorted(set(kwargs) - {"width_mult"})
    if unknown:
        raise ModelError(f"cifar_mobilenet_v2 takes only model.kwargs width_mult, not "
                         f"{', '.join(unknown)}; remove them")
    width = kwargs.get("width_mult", 1.0)
    if isinstance(width, bool) or not isinstance(width, (int, float)) or width <= 0:
        raise ModelError(f"model.kwargs.width_mult must be a number > 0, got {width!r}")
    return cifar_mobilenet_v2(num_classes, in_channels, float(width))


_cifar_mobilenet_v2.takes_kwargs = True  # type: ignore[attr-defined]
