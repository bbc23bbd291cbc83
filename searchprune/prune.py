"""Widths + kept indices -> a physically smaller network (no masks, no tracing per trial).

Each layer keeps the channels no group removes: a layer read by several groups (a conv or BN
after a concatenation) gets each group's selection at its own channel offsets. The channel
counts that result are exactly those the analytic cost model (:mod:`searchprune.space._cost`)
reads off the same group members.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from searchprune.models._layers import IndexShortcut
from searchprune.space._cost import _full_dim
from searchprune.space._groups import is_depthwise

if TYPE_CHECKING:  # the space's own exactness check builds networks with this module
    from searchprune.space import SearchSpace

__all__ = ["ModuleKeep", "module_keep", "param_keep", "prune_model"]


@dataclass
class ModuleKeep:
    """Kept input/output channel indices of one module (None = all kept)."""

    inp: torch.Tensor | None = None
    out: torch.Tensor | None = None


def _removed(space: SearchSpace, keep: Mapping[str, torch.Tensor], attr: str):
    """``{key: [removed index tensors]}`` over every group's members named by ``attr``."""
    removed: dict[object, list[torch.Tensor]] = defaultdict(list)
    for name, kept in keep.items():
        g = space.group(name)
        kept_set = torch.zeros(g.channels, dtype=torch.bool)
        kept_set[kept] = True
        for m in getattr(g, attr):
            idxs = torch.tensor(m.idxs, dtype=torch.long)
            roots = torch.tensor(m.root_idxs, dtype=torch.long)
            key = (m.module, m.role) if attr == "members" else (m.name, m.dim)
            removed[key].append(idxs[~kept_set[roots]])
    return removed


def _complement(size: int, parts: list[torch.Tensor]) -> torch.Tensor:
    mask = torch.ones(size, dtype=torch.bool)
    for p in parts:
        mask[p] = False
    return torch.nonzero(mask).flatten()


def module_keep(space: SearchSpace, keep: Mapping[str, torch.Tensor],
                model: nn.Module | None = None) -> dict[str, ModuleKeep]:
    """Translate per-group kept channels into per-module kept indices (the channels no group
    removes). Layer sizes come from ``model`` (the unpruned network) or ``space.dims``."""
    result: dict[str, ModuleKeep] = {}
    for (module, role), parts in _removed(space, keep, "members").items():
        size = space.dims.get((module, role))
        if model is not None:
            size = _full_dim(model.get_submodule(module), role)
        if size is None:
            raise ValueError(f"cannot tell the channel count of {module} ({role})")
        entry = result.setdefault(module, ModuleKeep())
        setattr(entry, "inp" if role == "in" else "out", _complement(size, parts))
    return result


def param_keep(space: SearchSpace, keep: Mapping[str, torch.Tensor],
               model: nn.Module) -> dict[str, tuple[int, torch.Tensor]]:
    """Kept indices (and the dimension) of every bare parameter a narrowed group touches."""
    params = dict(model.named_parameters())
    out = {}
    for (name, dim), parts in _removed(space, keep, "params").items():
        out[name] = (dim, _complement(params[name].shape[dim], parts))
    return out


def prune_model(model: nn.Module, space: SearchSpace,
                keep: Mapping[str, torch.Tensor]) -> nn.Module:
    """A deep copy of ``model`` with only the kept channels of each group.

    The result equals the original network with the removed channels' BN outputs zeroed.
    """
    pruned = copy.deepcopy(model)
    per_module = module_keep(space, keep, model)
    per_param = param_keep(space, keep, model)
    with torch.no_grad():
        for name, k in per_module.items():
            _slice(name, pruned.get_submodule(name), k)
        for name, (dim, kept) in per_param.items():
            owner, _, attr = name.rpartition(".")
            mod = pruned.get_submodule(owner)
            setattr(mod, attr, _param(getattr(mod, attr).index_select(dim, kept)))
    return pruned


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.contiguous().clone())


def _slice(name: str, mod: nn.Module, k: ModuleKeep) -> None:
    if isinstance(mod, nn.modules.conv._ConvNd):
        _slice_conv(name, mod, k)
    elif isinstance(mod, nn.Linear):
        _slice_dense(mod, k, "in_features", "out_features")
    elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
        sel = k.out if k.out is not None else k.inp
        if mod.affine:
            mod.weight = _param(mod.weight[sel])
            mod.bias = _param(mod.bias[sel])
        if mod.running_mean is not None:
            mod.running_mean = mod.running_mean[sel].clone()
            mod.running_var = mod.running_var[sel].clone()
        mod.num_features = int(sel.numel())
    elif isinstance(mod, nn.LayerNorm) and len(mod.normalized_shape) == 1:
        sel = k.out if k.out is not None else k.inp
        if mod.weight is not None:
            mod.weight = _param(mod.weight[sel])
        if mod.bias is not None:
            mod.bias = _param(mod.bias[sel])
        mod.normalized_shape = (int(sel.numel()),)
    elif isinstance(mod, nn.PReLU):
        sel = k.out if k.out is not None else k.inp
        if mod.num_parameters > 1:
            mod.weight = _param(mod.weight[sel])
            mod.num_parameters = int(sel.numel())
    elif isinstance(mod, IndexShortcut):
        mod.select(k.inp, k.out)
    elif any(True for _ in mod.parameters(recurse=False)):
        raise NotImplementedError(f"cannot prune {name} ({type(mod).__name__}): unsupported layer")


def _slice_conv(name: str, mod: nn.modules.conv._ConvNd, k: ModuleKeep) -> None:
    if mod.transposed:
        raise NotImplementedError(f"cannot prune transposed conv {name}")
    if is_depthwise(mod):
        sel = k.out if k.out is not None else k.inp
        mod.weight = _param(mod.weight[sel])
        if mod.bias is not None:
            mod.bias = _param(mod.bias[sel])
        mod.in_channels = mod.out_channels = mod.groups = int(sel.numel())
        return
    if mod.groups != 1:
        _slice_grouped(name, mod, k)
        return
    _slice_dense(mod, k, "in_channels", "out_channels")


def _per_block(name: str, kept: torch.Tensor | None, size: int, groups: int) -> list[torch.Tensor]:
    """Kept channels of each conv-group, local to it; every conv-group must keep as many."""
    if kept is None:
        return [torch.arange(size // groups)] * groups
    per = size // groups
    local = [kept[(kept >= b * per) & (kept < (b + 1) * per)] - b * per for b in range(groups)]
    if len({int(x.numel()) for x in local}) != 1 or local[0].numel() == 0:
        raise ValueError(f"grouped conv {name} (groups={groups}) must keep the same number of "
                         "channels in every conv-group")
    return local


def _slice_grouped(name: str, mod: nn.modules.conv._ConvNd, k: ModuleKeep) -> None:
    """A grouped conv keeps its ``groups``: each conv-group keeps its own input channels."""
    g = mod.groups
    local_in = _per_block(name, k.inp, mod.in_channels, g)
    local_out = _per_block(name, k.out, mod.out_channels, g)
    per_out = mod.out_channels // g
    rows = torch.cat([b * per_out + local_out[b] for b in range(g)])
    cols = torch.stack([local_in[int(o) // per_out] for o in rows])  # (out', in'/groups)
    w = mod.weight[rows]
    w = w[torch.arange(rows.numel())[:, None], cols]
    if mod.bias is not None and k.out is not None:
        mod.bias = _param(mod.bias[rows])
    mod.weight = _param(w)
    mod.out_channels = int(rows.numel())
    mod.in_channels = int(local_in[0].numel()) * g


def _slice_dense(mod: nn.Module, k: ModuleKeep, in_attr: str, out_attr: str) -> None:
    """Rows (outputs) and columns (inputs) of a conv or linear weight, and its bias."""
    w = mod.weight
    if k.out is not None:
        w = w[k.out]
        if mod.bias is not None:
            mod.bias = _param(mod.bias[k.out])
        setattr(mod, out_attr, int(k.out.numel()))
    if k.inp is not None:
        w = w[:, k.inp]
        setattr(mod, in_attr, int(k.inp.numel()))
    mod.weight = _param(w)
