"""Widths + kept indices -> a physically smaller network (no masks, no tracing per trial)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from searchprune.models._layers import IndexShortcut
from searchprune.space import SearchSpace, is_depthwise

__all__ = ["ModuleKeep", "module_keep", "prune_model"]


@dataclass
class ModuleKeep:
    """Kept input/output channel indices of one module (None = all kept)."""

    inp: torch.Tensor | None = None
    out: torch.Tensor | None = None


def module_keep(space: SearchSpace, keep: Mapping[str, torch.Tensor]) -> dict[str, ModuleKeep]:
    """Translate per-group kept channels into per-module kept indices."""
    result: dict[str, ModuleKeep] = {}
    for name, kept in keep.items():
        kept_set = torch.zeros(space.group(name).channels, dtype=torch.bool)
        kept_set[kept] = True
        for m in space.group(name).members:
            idxs = torch.tensor(m.idxs, dtype=torch.long)
            roots = torch.tensor(m.root_idxs, dtype=torch.long)
            sel = torch.sort(idxs[kept_set[roots]]).values
            entry = result.setdefault(m.module, ModuleKeep())
            setattr(entry, "inp" if m.role == "in" else "out", sel)
    return result


def prune_model(model: nn.Module, space: SearchSpace,
                keep: Mapping[str, torch.Tensor]) -> nn.Module:
    """A deep copy of ``model`` with only the kept channels of each group.

    The result equals the original network with the removed channels' BN outputs zeroed.
    """
    pruned = copy.deepcopy(model)
    per_module = module_keep(space, keep)
    with torch.no_grad():
        for name, k in per_module.items():
            _slice(name, pruned.get_submodule(name), k)
    return pruned


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.contiguous().clone())


def _slice(name: str, mod: nn.Module, k: ModuleKeep) -> None:
    if isinstance(mod, nn.Conv2d):
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
    elif isinstance(mod, IndexShortcut):
        mod.select(k.inp, k.out)
    elif any(True for _ in mod.parameters(recurse=False)):
        raise NotImplementedError(f"cannot prune {name} ({type(mod).__name__}): unsupported layer")


def _slice_conv(name: str, mod: nn.Conv2d, k: ModuleKeep) -> None:
    if is_depthwise(mod):
        sel = k.out if k.out is not None else k.inp
        mod.weight = _param(mod.weight[sel])
        if mod.bias is not None:
            mod.bias = _param(mod.bias[sel])
        mod.in_channels = mod.out_channels = mod.groups = int(sel.numel())
        return
    if mod.groups != 1:
        raise NotImplementedError(f"cannot prune grouped conv {name} (groups={mod.groups})")
    _slice_dense(mod, k, "in_channels", "out_channels")


def _slice_dense(mod: nn.Conv2d | nn.Linear, k: ModuleKeep, in_attr: str, out_attr: str) -> None:
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
