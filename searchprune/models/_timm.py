"""timm models: ``model.name: timm:<name>`` (timm is an optional extra: ``searchprune[timm]``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from torch import nn

from searchprune.errors import ModelError, did_you_mean
from searchprune.models._external import build_error, construct, first_line

__all__ = ["TIMM_PREFIX", "build_timm", "is_timm"]

TIMM_PREFIX = "timm:"

_log = logging.getLogger(__name__)


def is_timm(name: str) -> bool:
    return name.startswith(TIMM_PREFIX)


def _timm(name: str) -> ModuleType:
    try:
        import timm
    except ImportError:
        raise ModelError(f"model '{name}' needs timm, which is not installed; run "
                         "pip install 'searchprune[timm]' (or pip install timm)") from None
    return timm


def build_timm(name: str, num_classes: int, in_channels: int, pretrained: bool,
               kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """``timm.create_model`` for ``timm:<arch>``: random init unless ``pretrained`` (then
    timm's weights, from the Hugging Face cache or the network; a classifier for other than
    the weights' classes starts random, as timm does). ``kwargs`` go to the model."""
    timm = _timm(name)
    arch = name[len(TIMM_PREFIX):]
    if not timm.is_model(arch):
        hint = did_you_mean(arch, timm.list_models())
        raise ModelError(f"unknown timm model '{arch}'{hint}; list them with "
                         "python -c 'import timm; print(timm.list_models())'")
    given = {"model_name": arch, "pretrained": pretrained, "num_classes": num_classes,
             "in_chans": in_channels}
    if not pretrained:
        return construct(f"'{name}'", timm.create_model, kwargs, **given)
    try:
        model = timm.create_model(**given, **dict(kwargs or {}))
    except Exception as exc:
        if _fetch_error(exc):
            raise ModelError(
                f"cannot fetch pretrained weights for '{name}' ({type(exc).__name__}: "
                f"{first_line(exc)}); download them once with network access, or set "
                "model.pretrained: false and model.checkpoint") from None
        error = build_error(f"'{name}'", exc, kwargs)
        if error is None:
            raise
        raise error from None
    classes = getattr(model, "pretrained_cfg", {}).get("num_classes")
    if classes and classes != num_classes:
        _log.warning("%s: pretrained for %s classes; its classifier for %d classes starts from "
                     "random weights (fine-tune it, or set model.checkpoint)", name, classes,
                     num_classes)
    return model


def _fetch_error(exc: BaseException) -> bool:
    """An error of getting the weights (network, Hugging Face cache, a model timm has no
    weights for), not of the arguments."""
    module = type(exc).__module__.split(".")[0]
    return isinstance(exc, (OSError, RuntimeError)) or module in (
        "huggingface_hub", "httpx", "httpcore", "requests", "urllib3", "safetensors")
