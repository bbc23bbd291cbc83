"""The criterion interface and registry: which channels of a group to keep."""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import nn

from searchprune.errors import ConfigError
from searchprune.space import SearchSpace

__all__ = ["Criterion", "available", "compute_scores", "get_criterion", "register"]

_REGISTRY: dict[str, type[Criterion]] = {}


class Criterion(ABC):
    """Scores every channel of every prunable group; a higher score means more important.

    Scores are computed once, on the unpruned network, and reused by every candidate.
    Ranking happens within a group only, so a group's scores may be scaled freely.
    """

    name: str = ""
    needs_data: bool = False

    @abstractmethod
    def scores(self, model: nn.Module, space: SearchSpace, data, *,
               device: torch.device) -> dict[str, torch.Tensor]:
        """One float tensor of shape ``(group.channels,)`` per prunable group."""


def register(name: str) -> Callable[[type[Criterion]], type[Criterion]]:
    """Class decorator that adds a criterion under ``name`` (duplicates are refused)."""

    def deco(cls: type[Criterion]) -> type[Criterion]:
        if name in _REGISTRY:
            raise ValueError(f"criterion '{name}' is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available() -> list[str]:
    return sorted(_REGISTRY)


def get_criterion(name: str, **options) -> Criterion:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, available(), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown criterion '{name}'{hint}; choose one of: {', '.join(available())}")
    return _REGISTRY[name](**options)


def compute_scores(name: str, model: nn.Module, space: SearchSpace, data=None, *,
                   device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """Scores of criterion ``name`` for every prunable group of ``space``."""
    crit = get_criterion(name)
    device = device or torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        scores = crit.scores(model, space, data, device=device)
    finally:
        model.train(was_training)
    return {k: v.detach().double().cpu() for k, v in scores.items()}
