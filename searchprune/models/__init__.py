"""Model registry and :func:`build_model`.

``cfg.name`` is one of :func:`list_models` (``cifar_resnet<6n+2>`` for any depth), a torchvision
classification model name, or ``package.module:factory``.
"""

from __future__ import annotations

import re

from torch import nn

from searchprune.config import ModelConfig
from searchprune.errors import ModelError, did_you_mean
from searchprune.models import _builtin
from searchprune.models._checkpoint import load_checkpoint, load_weights, read_state_dict
from searchprune.models._external import build_from_factory, build_torchvision, torchvision_names
from searchprune.models._registry import get_builder, list_models, register_model
from searchprune.models.cifar_resnet import BasicBlock, CifarResNet
from searchprune.models.cifar_vgg import CifarVGG

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "CifarVGG",
    "build_model",
    "list_models",
    "load_checkpoint",
    "load_weights",
    "read_state_dict",
    "register_model",
    "torchvision_names",
]

_CIFAR_RESNET = re.compile(r"cifar_resnet(\d+)")


def _random_init(cfg: ModelConfig, num_classes: int, in_channels: int) -> nn.Module:
    name = cfg.name
    builder = get_builder(name)
    tv = name in torchvision_names()
    if cfg.pretrained and not tv:
        raise ModelError(
            f"model.pretrained applies to torchvision models only; "
            f"for '{name}' set model.checkpoint"
        )
    if builder is not None:
        return builder(cfg, num_classes, in_channels)
    match = _CIFAR_RESNET.fullmatch(name)
    if match:
        depth = int(match.group(1))
        if depth < 8 or (depth - 2) % 6:
            raise ModelError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        return _builtin.cifar_resnet_builder(depth)(cfg, num_classes, in_channels)
    if ":" in name:
        return build_from_factory(name, num_classes, in_channels)
    if tv:
        return build_torchvision(name, num_classes, in_channels, cfg.pretrained)
    hint = did_you_mean(name, [*list_models(), *torchvision_names()])
    raise ModelError(f"unknown model '{name}'{hint}; run 'searchprune model list'")


def build_model(cfg: ModelConfig, *, num_classes: int, in_channels: int = 3) -> nn.Module:
    """Build ``cfg.name``, load ``cfg.checkpoint`` if set; return it in eval mode on the CPU.

    ``cfg.num_classes``, when set, overrides ``num_classes`` (the data's class count).

    Raises:
        ModelError: unknown name, bad depth, factory that cannot be imported.
        CheckpointError: checkpoint missing, unreadable, or not fitting the model.
    """
    classes = cfg.num_classes if cfg.num_classes is not None else num_classes
    model = _random_init(cfg, classes, in_channels)
    if cfg.checkpoint:
        load_checkpoint(model, cfg.checkpoint, name=cfg.name, trust=cfg.trust_checkpoint)
    return model.cpu().eval()
