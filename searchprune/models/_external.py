"""Models from outside: torchvision classification models and user ``package.module:factory``."""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any

import torchvision
from torch import nn

from searchprune._factory import import_factory
from searchprune.errors import ModelError

__all__ = ["build_from_factory", "build_torchvision", "torchvision_names"]


@lru_cache(maxsize=1)
def torchvision_names() -> tuple[str, ...]:
    return tuple(torchvision.models.list_models(module=torchvision.models))


def build_torchvision(
    name: str, num_classes: int, in_channels: int, pretrained: bool
) -> nn.Module:
    """A torchvision classification model: ImageNet weights (``DEFAULT``) or random init."""
    if in_channels != 3:
        raise ModelError(
            f"torchvision model '{name}' expects 3-channel images, data has {in_channels}"
        )
    if not pretrained:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if num_classes != 1000:
        raise ModelError(
            f"pretrained weights of '{name}' have 1000 ImageNet classes, but the data has "
            f"{num_classes}; set model.pretrained: false (and model.checkpoint) "
            "or use ImageNet data"
        )
    weights = torchvision.models.get_model_weights(name).DEFAULT
    try:
        return torchvision.models.get_model(name, weights=weights)
    except (OSError, RuntimeError) as exc:  # no network, blocked URL, corrupt cached file
        raise ModelError(
            f"cannot fetch pretrained weights for '{name}' ({type(exc).__name__}); "
            "download them once with network access or set model.checkpoint"
        ) from None


def _accepts(fn: Any, param: str, *, var_keyword: bool = True) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == param or (var_keyword and p.kind is p.VAR_KEYWORD) for p in params)


def build_from_factory(spec: str, num_classes: int, in_channels: int) -> nn.Module:
    """Import ``package.module:factory`` and call it with the keywords it accepts."""
    factory = import_factory(spec, "model", ModelError)
    kwargs: dict[str, int] = {}
    if _accepts(factory, "num_classes"):
        kwargs["num_classes"] = num_classes
    if _accepts(factory, "in_channels", var_keyword=False):
        kwargs["in_channels"] = in_channels
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        kind = type(model).__name__
        raise ModelError(f"model factory '{spec}' returned {kind}, not an nn.Module")
    return model
