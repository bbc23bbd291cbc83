"""The search space: prunable groups, keep-ratio -> width rounding, analytic cost, kept indices."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from searchprune.space._cost import Cost, CostModel
from searchprune.space._groups import ChannelGroup, discover_groups

__all__ = ["SearchSpace", "round_width"]


def round_width(ratio: float, channels: int, round_to: int = 1) -> int:
    """``round(ratio * channels)`` to a multiple of ``round_to``, at least one unit, at most all."""
    unit = max(1, min(round_to, channels))
    width = int(round(ratio * channels / unit)) * unit
    return max(unit, min(channels, width))


class SearchSpace:
    """Channel groups of one network and the cost of any width configuration."""

    def __init__(self, groups: list[ChannelGroup], cost_model: CostModel, round_to: int = 1) -> None:
        self.groups = groups
        self.prunable = [g for g in groups if g.prunable]
        self.round_to = round_to
        self._cost = cost_model
        self._by_name = {g.name: g for g in groups}
        self.base_cost = cost_model.cost({})

    @classmethod
    def from_model(cls, model: nn.Module, example: torch.Tensor, *, round_to: int = 1,
                   prune_classifier_input: bool = False) -> SearchSpace:
        """Discover the groups by tracing ``model`` once on ``example`` and profile its cost."""
        was_training = model.training
        model.eval()
        try:
            groups = discover_groups(model, example[:1],
                                     prune_classifier_input=prune_classifier_input)
            return cls(groups, CostModel(model, example[:1], groups), round_to)
        finally:
            model.train(was_training)

    def group(self, name: str) -> ChannelGroup:
        return self._by_name[name]

    def widths(self, ratios: Mapping[str, float]) -> dict[str, int]:
        """Widths of the prunable groups; groups missing from ``ratios`` keep all channels."""
        return {
            g.name: round_width(ratios[g.name], g.channels, self.round_to) if g.name in ratios
            else g.channels
            for g in self.prunable
        }

    def cost(self, widths: Mapping[str, int]) -> Cost:
        return self._cost.cost(dict(widths))

    def flops_ratio(self, widths: Mapping[str, int]) -> float:
        return self.cost(widths).flops / self.base_cost.flops

    def keep_indices(self, widths: Mapping[str, int],
                     scores: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """For every group narrower than full: the kept channels (highest score), sorted."""
        keep = {}
        for name, width in widths.items():
            g = self._by_name[name]
            if width >= g.channels:
                continue
            if not g.prunable:
                raise ValueError(f"group '{name}' is not prunable")
            top = torch.topk(scores[name].double(), int(width)).indices
            keep[name] = torch.sort(top).values
        return keep
