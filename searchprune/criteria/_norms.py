"""L1 and L2 filter norms (paper Sec. 3.2), aggregated over all producers of a group.

For a group channel j the filter vectors of every producer are concatenated: L1 sums the
producers' L1 norms, L2 is the square root of the sum of their squared L2 norms. Biases and BN
parameters are excluded.
"""

from __future__ import annotations

import torch
from torch import nn

from searchprune.criteria._base import Criterion, register
from searchprune.space import SearchSpace

__all__ = ["L1Norm", "L2Norm", "group_filter_reduce"]


def group_filter_reduce(model: nn.Module, space: SearchSpace, per_filter) -> dict[str, torch.Tensor]:
    """Sum ``per_filter(weight) -> (out_channels,)`` over every producer of each prunable group,
    mapped to group channel order. Depthwise convs of a group count as producers too."""
    result = {}
    for g in space.prunable:
        total = torch.zeros(g.channels, dtype=torch.float64)
        for m in g.members:
            mod = model.get_submodule(m.module)
            if m.role != "out" or not isinstance(mod, (nn.Conv2d, nn.Linear)):
                continue
            values = per_filter(mod.weight.detach().double().flatten(1))
            idxs = torch.tensor(m.idxs)
            roots = torch.tensor(m.root_idxs)
            total.index_add_(0, roots, values[idxs])
        result[g.name] = total
    return result


@register("l1")
class L1Norm(Criterion):
    def scores(self, model, space, data, *, device):
        return group_filter_reduce(model, space, lambda w: w.abs().sum(1))


@register("l2")
class L2Norm(Criterion):
    def scores(self, model, space, data, *, device):
        sq = group_filter_reduce(model, space, lambda w: w.pow(2).sum(1))
        return {k: v.sqrt() for k, v in sq.items()}
