"""A dict of model builders and the decorator that fills it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from searchprune.config import ModelConfig

__all__ = ["Builder", "get_builder", "list_models", "register_model"]

# builder(cfg, num_classes, in_channels) -> model (random init; build_model loads checkpoints)
Builder = Callable[["ModelConfig", int, int], "nn.Module"]

_MODELS: dict[str, Builder] = {}


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Register ``builder(cfg, num_classes, in_channels) -> nn.Module`` under ``name``."""

    def wrap(builder: Builder) -> Builder:
        if name in _MODELS:
            raise ValueError(f"model '{name}' is already registered")
        _MODELS[name] = builder
        return builder

    return wrap


def list_models() -> list[str]:
    """Names registered here (torchvision names and ``module:factory`` also work)."""
    return sorted(_MODELS)


def get_builder(name: str) -> Builder | None:
    return _MODELS.get(name)
