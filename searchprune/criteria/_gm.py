"""GM: geometric-median redundancy (FPGM, He et al. CVPR 2019), scored per channel group.

For a group channel j, the filters of every producer (conv/linear out members, depthwise ones
included, as for L1/L2) are concatenated into one vector v_j. The score is the summed Euclidean
distance to all other group channels, ``s_j = sum_k ||v_j - v_k||_2``. Channels with the
SMALLEST sum lie nearest the geometric median and are the most replaceable, so they are pruned
first; the distance sum is therefore already "higher = keep".

Aggregation choice: distances on the concatenated vectors, i.e.
``||v_j - v_k|| = sqrt(sum over producers of ||W_j - W_k||^2)`` (not the sum of per-producer
distance sums). Computed in float64.
"""

from __future__ import annotations

import torch
from torch import nn

from searchprune.criteria._base import Criterion, register
from searchprune.space import ChannelGroup

__all__ = ["GeometricMedian", "group_filter_matrix"]


def group_filter_matrix(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """``(channels, D)`` float64: row j concatenates group channel j's filter in every producer."""
    parts = []
    for m in group.members:
        mod = model.get_submodule(m.module)
        if m.role != "out" or not isinstance(mod, (nn.Conv2d, nn.Linear)):
            continue
        w = mod.weight.detach().double().flatten(1)
        rows = torch.zeros(group.channels, w.shape[1], dtype=torch.float64, device=w.device)
        rows[torch.tensor(m.root_idxs, device=w.device)] = w[torch.tensor(m.idxs, device=w.device)]
        parts.append(rows)
    if not parts:
        raise ValueError(f"group '{group.name}' has no conv/linear producer")
    return torch.cat(parts, dim=1)


@register("gm")
class GeometricMedian(Criterion):
    def scores(self, model, space, data, *, device):
        result = {}
        for g in space.prunable:
            v = group_filter_matrix(model, g)
            result[g.name] = torch.cdist(v, v).sum(1).cpu()
        return result
