"""Which built-in models searchprune trains itself when no checkpoint is given, and on what
data (the recipes and the training are in :mod:`searchprune.models.baseline`). A module of its
own, importing nothing, so that the config checks can ask without importing the models."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from searchprune.config import ModelConfig

__all__ = ["TRAINED_ON", "has_recipe"]

# model name -> the data names its recipe trains on
TRAINED_ON: dict[str, tuple[str, ...]] = {"digits_resnet8": ("digits",),
                                          "cifar_mobilenet_v2": ("cifar10", "imagefolder")}


def has_recipe(model_cfg: ModelConfig) -> bool:
    """Whether searchprune trains ``model_cfg`` itself (a recipe model without a checkpoint)."""
    return model_cfg.name in TRAINED_ON and not model_cfg.checkpoint
