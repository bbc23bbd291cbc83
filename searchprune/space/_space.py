"""The search space: prunable groups, keep-ratio -> width rounding, analytic cost, kept indices."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from searchprune.space._cost import (
    Cost,
    CostModel,
    _full_dim,
    layer_role,
    linear_form,
    member_cover,
)
from searchprune.space._groups import ChannelGroup, discover
from searchprune.space._trace import DEFAULT_MEMORY_GB, DEFAULT_SECONDS

__all__ = ["SearchSpace", "round_width"]


def round_width(ratio: float, channels: int, round_to: int = 1) -> int:
    """``round(ratio * channels)`` to a multiple of ``round_to``, at least one unit, at most all."""
    unit = max(1, min(round_to, channels))
    width = int(round(ratio * channels / unit)) * unit
    return max(unit, min(channels, width))


class SearchSpace:
    """Channel groups of one network and the cost of any width configuration."""

    def __init__(self, groups: list[ChannelGroup], cost_model: CostModel, round_to: int = 1,
                 dims: Mapping[tuple[str, str], int] | None = None) -> None:
        self.groups = groups
        self.prunable = [g for g in groups if g.prunable]
        self.round_to = round_to
        self.dims = dict(dims or {})  # (module, role) -> channels of the unpruned layer
        self._cost = cost_model
        self._by_name = {g.name: g for g in groups}
        self.base_cost = cost_model.cost({})
        self._cover: dict[tuple[str, str], list[tuple[int, float, int]]] | None = None

    @classmethod
    def from_model(cls, model: nn.Module, example: torch.Tensor, *, round_to: int = 1,
                   prune_classifier_input: bool = False, verify: bool = True,
                   seconds: float = DEFAULT_SECONDS,
                   memory_gb: float = DEFAULT_MEMORY_GB) -> SearchSpace:
        """Discover the groups by tracing ``model`` once on ``example`` and profile its cost.

        With ``verify`` the analytic cost is checked against networks built at random widths
        (:func:`~searchprune.space._check.verify_space`): a group whose cost is not exact is
        kept whole (its ``reason`` says why); a mismatch no single group explains is a one-line
        ModelError.
        """
        was_training = model.training
        model.eval()
        try:
            groups, trace = discover(model, example[:1],
                                     prune_classifier_input=prune_classifier_input,
                                     seconds=seconds, memory_gb=memory_gb)
            cost = CostModel(model, example[:1], groups, trace)
            del trace
            space = cls(groups, cost, round_to, _dims(model, groups))
            if verify:
                from searchprune.space._check import verify_space

                space = verify_space(model, example[:1], space)
            return space
        finally:
            model.train(was_training)

    def with_fixed(self, reasons: Mapping[str, str]) -> SearchSpace:
        """This space with the named groups kept whole for the given reasons."""
        groups = [g.fixed(reasons[g.name]) if g.name in reasons else g for g in self.groups]
        return SearchSpace(groups, self._cost, self.round_to, self.dims)

    @property
    def fixed(self) -> list[ChannelGroup]:
        """The groups that are not searched, each with its ``reason``."""
        return [g for g in self.groups if not g.prunable]

    def group(self, name: str) -> ChannelGroup:
        return self._by_name[name]

    def unit(self, group: ChannelGroup) -> int:
        """Widths of ``group`` are multiples of this (``round_to`` and its conv-groups)."""
        return math.lcm(self.round_to, group.unit)

    def widths(self, ratios: Mapping[str, float]) -> dict[str, int]:
        """Widths of the prunable groups; groups missing from ``ratios`` keep all channels."""
        return {
            g.name: round_width(ratios[g.name], g.channels, self.unit(g)) if g.name in ratios
            else g.channels
            for g in self.prunable
        }

    def cost(self, widths: Mapping[str, int]) -> Cost:
        return self._cost.cost(dict(widths))

    def flops_ratio(self, widths: Mapping[str, int]) -> float:
        return self.cost(widths).flops / self.base_cost.flops

    def channel_form(self, module: nn.Module, name: str, role: str) -> dict[str | None, float]:
        """The ``role`` (``in``/``out``) channel count of layer ``name`` as the cost model
        computes it: ``{None: constant, group: multiplier}`` over the searched groups (the
        groups kept whole are in the constant); ``module`` is that layer."""
        if self._cover is None:
            self._cover = member_cover(self.groups)
        role = layer_role(module, role)
        full = _full_dim(module, role)
        if full is None:
            return {None: 1.0}
        form: dict[str | None, float] = {None: 0.0}
        for gi, mult in linear_form(full, self._cover.get((name, role), [])):
            g = self.groups[gi - 1] if gi else None
            if g is None or not g.prunable:
                form[None] += mult * (g.channels if g is not None else 1.0)
            else:
                form[g.name] = form.get(g.name, 0.0) + mult
        return form

    def first_indices(self, widths: Mapping[str, int]) -> dict[str, torch.Tensor]:
        """For every group narrower than full: its first ``width`` channels, or, in a group a
        grouped conv reads or writes, the first ``width / unit`` channels of each conv-group
        (the slimmable supernet's sub-networks; a network whose weights do not matter)."""
        order = {name: -torch.arange(self._by_name[name].channels, dtype=torch.float64)
                 for name in widths}
        return self.keep_indices(widths, order)

    def keep_indices(self, widths: Mapping[str, int],
                     scores: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """For every group narrower than full: the kept channels (highest score), sorted. In a
        group read or written by a grouped conv, each conv-group keeps its highest-scored
        ``width / unit`` channels."""
        keep = {}
        for name, width in widths.items():
            g = self._by_name[name]
            if width >= g.channels:
                continue
            if not g.prunable:
                raise ValueError(f"group '{name}' is not prunable")
            score = scores[name].double()
            if g.blocks is None:
                top = torch.topk(score, int(width)).indices
            else:
                top = _top_per_block(score, g.blocks, int(width))
            keep[name] = torch.sort(top).values
        return keep


def _top_per_block(score: torch.Tensor, blocks: tuple[int, ...], width: int) -> torch.Tensor:
    ids = torch.tensor(blocks)
    n = int(ids.max()) + 1
    if width % n:
        raise ValueError(f"width {width} is not a multiple of the {n} conv-groups")
    parts = []
    for b in range(n):
        idx = torch.nonzero(ids == b).flatten()
        parts.append(idx[torch.topk(score[idx], width // n).indices])
    return torch.cat(parts)


def _dims(model: nn.Module, groups: list[ChannelGroup]) -> dict[tuple[str, str], int]:
    dims = {}
    for g in groups:
        for m in g.members:
            size = _full_dim(model.get_submodule(m.module), m.role)
            if size is not None:
                dims[(m.module, m.role)] = size
    return dims

