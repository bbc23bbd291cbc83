"""Allowed widths per channel group (multiples of 8, make_divisible rounding) and sampling.

The rounding follows ``slimmable_ops.make_divisible`` of the Slimmable/US-Nets reference code
(docs/algorithms.md §5): nearest multiple, at least one multiple, bumped up by one multiple when the
rounding lost more than 10 %.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from searchprune.space import ChannelGroup

__all__ = ["WidthChoices", "allowed_widths", "make_divisible", "sample_configs"]


def make_divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to the nearest multiple of ``divisor``, at least ``divisor``, and never
    below 90 % of ``value`` (then one ``divisor`` more)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def allowed_widths(channels: int, min_ratio: float, multiple: int = 8) -> tuple[int, ...]:
    """``{min, min + multiple, ..., channels}``: ``min = max(multiple, make_divisible(min_ratio *
    channels))`` (capped at ``channels``); ``channels`` is added when it is not a multiple.
    No width ever exceeds ``channels``."""
    low = min(channels, max(multiple, make_divisible(min_ratio * channels, multiple)))
    widths = list(range(low, channels + 1, multiple))
    if not widths or widths[-1] != channels:
        widths.append(channels)
    return tuple(widths)


@dataclass(frozen=True)
class WidthChoices:
    """The allowed widths of every prunable group; a configuration is ``{group: width}``."""

    choices: dict[str, tuple[int, ...]]

    @classmethod
    def from_groups(cls, groups: Sequence[ChannelGroup], min_ratio: float,
                    multiple: int = 8) -> WidthChoices:
        """Per group, :func:`allowed_widths` in multiples of ``multiple`` and of the group's
        conv-groups (a group a grouped conv reads keeps as many channels in each)."""
        return cls({g.name: allowed_widths(g.channels, min_ratio, math.lcm(multiple, g.unit))
                    for g in groups})

    def full(self) -> dict[str, int]:
        return {name: ws[-1] for name, ws in self.choices.items()}

    def smallest(self) -> dict[str, int]:
        return {name: ws[0] for name, ws in self.choices.items()}

    def nearest(self, ratios: Mapping[str, float]) -> dict[str, int]:
        """The allowed width closest to ``ratio * channels`` per group (ties: the wider);
        groups missing from ``ratios`` keep all channels. Monotone in each ratio."""
        out = {}
        for name, ws in self.choices.items():
            if name not in ratios:
                out[name] = ws[-1]
                continue
            target = float(ratios[name]) * ws[-1]
            out[name] = min(ws, key=lambda w: (abs(w - target), -w))
        return out

    def sample(self, generator: torch.Generator | None = None) -> dict[str, int]:
        """Per group, independently, one width drawn uniformly from its allowed set (the
        "nonuniform" US-Nets / AutoSlim mode)."""
        out = {}
        for name, ws in self.choices.items():
            i = int(torch.randint(len(ws), (1,), generator=generator))
            out[name] = ws[i]
        return out

    def contains(self, widths: Mapping[str, int]) -> bool:
        return all(int(widths.get(n, ws[-1])) in ws for n, ws in self.choices.items())


def sample_configs(choices: WidthChoices, num_random: int, sandwich: bool = False,
                   generator: torch.Generator | None = None) -> list[dict[str, int]]:
    """The sub-networks of one training step, the full network first.

    Paper (Sec. 5): full + ``num_random`` random networks. ``sandwich`` (US-Nets rule): full +
    smallest + ``num_random - 1`` random ones, so both rules run ``num_random + 1`` networks.
    """
    configs = [choices.full()]
    randoms = num_random
    if sandwich and num_random > 0:
        configs.append(choices.smallest())
        randoms -= 1
    configs.extend(choices.sample(generator) for _ in range(randoms))
    return configs
