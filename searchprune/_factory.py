"""``package.module:factory`` names: a user's own model, sampler or criterion, imported by every
process that reads the config (so every worker has it, not only the one that registered it)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from searchprune.errors import ConfigError, SearchpruneError

__all__ = ["check_spec", "import_factory"]


def check_spec(spec: str, what: str, error: type[SearchpruneError] = ConfigError
               ) -> tuple[str, str]:
    """``(module, attribute)`` of ``spec`` (``package.module:function``), checked by its form
    only: nothing is imported. ``what`` names the config key in messages."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise error(f"{what} '{spec}' must look like 'package.module:function'")
    return module_name, attr


def import_factory(spec: str, what: str,
                   error: type[SearchpruneError] = ConfigError) -> Callable[..., Any]:
    """The callable named by ``spec`` (``package.module:function``); ``what`` names the config
    key in messages. Raises ``error`` (exit 2) when it cannot be imported."""
    module_name, attr = check_spec(spec, what, error)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise error(f"cannot import module '{module_name}' for {what} '{spec}': {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise error(f"module '{module_name}' has no callable '{attr}'")
    return factory
