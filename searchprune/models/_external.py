"""Models from outside: torchvision classification models and user ``package.module:factory``."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

import torchvision
from torch import nn

from searchprune._factory import import_factory
from searchprune.errors import ModelError

__all__ = ["build_error", "build_from_factory", "build_torchvision", "construct", "first_line",
           "torchvision_names"]


@lru_cache(maxsize=1)
def torchvision_names() -> tuple[str, ...]:
    return tuple(torchvision.models.list_models(module=torchvision.models))


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def build_error(what: str, exc: BaseException, kwargs: Mapping[str, Any] | None
                ) -> ModelError | None:
    """The one-line error of a constructor that refused its arguments (``TypeError``,
    ``ValueError``, ``AssertionError``), or None for any other exception."""
    if not isinstance(exc, (TypeError, ValueError, AssertionError)):
        return None
    hint = "; check model.kwargs" if kwargs else ""
    return ModelError(f"cannot build model {what}: {first_line(exc)}{hint}")


def construct(what: str, build: Callable[..., Any], kwargs: Mapping[str, Any] | None,
              **given: Any) -> Any:
    """``build(**given, **kwargs)``; a constructor that refuses its arguments is a one-line
    :class:`ModelError` naming ``what`` (:func:`build_error`)."""
    try:
        return build(**given, **dict(kwargs or {}))
    except Exception as exc:
        error = build_error(what, exc, kwargs)
        if error is None:
            raise
        raise error from None


def build_torchvision(
    name: str, num_classes: int, in_channels: int, pretrained: bool,
    kwargs: Mapping[str, Any] | None = None,
) -> nn.Module:
    """A torchvision classification model: ImageNet weights (``DEFAULT``) or random init;
    ``kwargs`` go to its builder."""
    if in_channels != 3:
        raise ModelError(
            f"torchvision model '{name}' expects 3-channel images, data has {in_channels}"
        )
    build = torchvision.models.get_model
    if not pretrained:
        return construct(f"'{name}'", build, kwargs, name=name, weights=None,
                         num_classes=num_classes)
    if num_classes != 1000:
        raise ModelError(
            f"pretrained weights of '{name}' have 1000 ImageNet classes, but the data has "
            f"{num_classes}; set model.pretrained: false (and model.checkpoint) "
            "or use ImageNet data"
        )
    weights = torchvision.models.get_model_weights(name).DEFAULT
    try:
        return construct(f"'{name}'", build, kwargs, name=name, weights=weights)
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


def build_from_factory(spec: str, num_classes: int, in_channels: int,
                       kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """Import ``package.module:factory`` and call it with the keywords it accepts, plus
    ``kwargs``."""
    factory = import_factory(spec, "model", ModelError)
    given: dict[str, int] = {}
    if _accepts(factory, "num_classes"):
        given["num_classes"] = num_classes
    if _accepts(factory, "in_channels", var_keyword=False):
        given["in_channels"] = in_channels
    model = construct(f"factory '{spec}'", factory, kwargs, **given)
    if not isinstance(model, nn.Module):
        kind = type(model).__name__
        raise ModelError(f"model factory '{spec}' returned {kind}, not an nn.Module")
    return model
