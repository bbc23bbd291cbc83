"""Model registry and :func:`build_model`.

``cfg.name`` is one of :func:`list_models` (``cifar_resnet<6n+2>`` for any depth), a torchvision
classification model name, ``timm:<name>`` or ``package.module:factory``; ``cfg.kwargs`` are
more constructor arguments for the last three.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from searchprune.config import ModelConfig
from searchprune.errors import ModelError, did_you_mean
from searchprune.models import _builtin
from searchprune.models._checkpoint import load_checkpoint, load_weights, read_state_dict
from searchprune.models._external import (
    build_from_factory,
    build_torchvision,
    first_line,
    torchvision_names,
)
from searchprune.models._registry import get_builder, list_models, register_model
from searchprune.models._timm import build_timm, is_timm
from searchprune.models.cifar_resnet import BasicBlock, CifarResNet
from searchprune.models.cifar_vgg import CifarVGG

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "CifarVGG",
    "build_model",
    "check_input",
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
    if is_timm(name):  # before "module:factory": timm:<name> is not a factory
        return build_timm(name, num_classes, in_channels, cfg.pretrained, cfg.kwargs)
    builder = get_builder(name)
    tv = name in torchvision_names()
    if cfg.pretrained and not tv:
        raise ModelError(
            f"model.pretrained applies to torchvision models only (and timm:<name>); "
            f"for '{name}' set model.checkpoint"
        )
    match = _CIFAR_RESNET.fullmatch(name)
    builtin = getattr(builder, "__module__", None) == _builtin.__name__
    if cfg.kwargs and (match or (builtin and not getattr(builder, "takes_kwargs", False))):
        raise ModelError(f"model '{name}' takes no model.kwargs (they are for torchvision, "
                         "timm:<name> and package.module:factory models); remove them")
    if builder is not None:  # a registered builder reads what it needs from cfg (cfg.kwargs)
        return builder(cfg, num_classes, in_channels)
    if match:
        depth = int(match.group(1))
        if depth < 8 or (depth - 2) % 6:
            raise ModelError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        return _builtin.cifar_resnet_builder(depth)(cfg, num_classes, in_channels)
    if ":" in name:
        return build_from_factory(name, num_classes, in_channels, cfg.kwargs)
    if tv:
        return build_torchvision(name, num_classes, in_channels, cfg.pretrained, cfg.kwargs)
    hint = did_you_mean(name, [*list_models(), *torchvision_names()])
    raise ModelError(f"unknown model '{name}'{hint}; run 'searchprune model list'")


def build_model(cfg: ModelConfig, *, num_classes: int, in_channels: int = 3,
                input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """Build ``cfg.name`` (with ``cfg.kwargs``), load ``cfg.checkpoint`` if set; return it in
    eval mode on the CPU. With ``input_shape`` (one image, ``(C, H, W)``) the model must take
    it (:func:`check_input`).

    ``cfg.num_classes``, when set, overrides ``num_classes`` (the data's class count).

    Raises:
        ModelError: unknown name, bad depth, factory that cannot be imported, arguments the
            constructor refuses, an input size the model cannot take, timm not installed.
        CheckpointError: checkpoint missing, unreadable, or not fitting the model.
    """
    classes = cfg.num_classes if cfg.num_classes is not None else num_classes
    model = _random_init(cfg, classes, in_channels)
    if cfg.checkpoint:
        load_checkpoint(model, cfg.checkpoint, name=cfg.name, trust=cfg.trust_checkpoint)
    model = model.cpu().eval()
    if input_shape is not None:
        check_input(model, cfg.name, input_shape)
    return model


def check_input(model: nn.Module, name: str, input_shape: tuple[int, ...]) -> None:
    """Run ``model`` (in eval mode) on one blank image of ``input_shape``: a model that cannot
    take that size, or that returns no ``(batch, classes)`` logits, is a one-line
    :class:`ModelError` saying what to set."""
    c, h, w = input_shape
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, c, h, w))
    except Exception as exc:
        raise ModelError(
            f"model '{name}' does not accept {h}x{w} inputs with {c} channels: "
            f"{first_line(exc)}; set data.image_size to a size it takes, or pass the size "
            f"through model.kwargs (e.g. image_size: {h} for a ViT)"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1:
        kind = (f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor)
                else type(out).__name__)
        raise ModelError(f"model '{name}' returns {kind} for a batch of one image; searchprune "
                         "needs a (batch, classes) tensor of logits")
