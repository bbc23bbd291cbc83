"""Helpers shared by the data-driven criteria: where a group channel leaves its producers,
per-channel output masks/gates as forward hooks, and the images to score on."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from searchprune.space import ChannelGroup

__all__ = ["GatePoint", "calib_images", "gate_points", "model_device", "scale_channels"]

_NORMS = (nn.modules.batchnorm._BatchNorm,)
_WEIGHTED = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class GatePoint:
    """An output of a group member: module channel ``idxs[k]`` is group channel ``roots[k]``."""

    module: str
    idxs: torch.Tensor
    roots: torch.Tensor

    def channel_map(self, channels: int, module_channels: int) -> torch.Tensor:
        """``(channels, module_channels)`` 0/1 matrix: which module channels a group channel is."""
        m = torch.zeros(channels, module_channels)
        m[self.roots, self.idxs] = 1.0
        return m


def gate_points(model: nn.Module, group: ChannelGroup) -> list[GatePoint]:
    """Where the group's channels leave their producers, i.e. the outputs that removing a group
    channel zeroes: every BN output of the group (the conv before it then needs no mask) and every
    parameter-free out member (the option-A :class:`IndexShortcut`, whose output channel vanishes
    with the group channel too). Groups without BN are gated at their conv/linear outputs.

    Masking these outputs reproduces :func:`searchprune.prune.prune_model` exactly.
    """
    outs = [(m, model.get_submodule(m.module)) for m in group.members if m.role == "out"]
    has_norm = any(isinstance(mod, _NORMS) for _, mod in outs)
    points = []
    for m, mod in outs:
        weighted = isinstance(mod, _WEIGHTED)
        if (weighted and not has_norm) or not weighted:
            points.append(GatePoint(m.module, torch.tensor(m.idxs), torch.tensor(m.root_idxs)))
    return points


def scale_channels(out: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``out * scale`` along dim 1; ``scale`` is ``(C,)`` or ``(k, C)`` for ``k`` batch replicas."""
    if scale.dim() == 1:
        return out * scale.view(1, -1, *([1] * (out.dim() - 2)))
    k = scale.shape[0]
    view = out.reshape(k, -1, *out.shape[1:])
    view = view * scale.view(k, 1, scale.shape[1], *([1] * (out.dim() - 2)))
    return view.reshape(out.shape)


def model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    """Where the model's parameters live (inputs must go there); ``fallback`` if it has none."""
    p = next(model.parameters(), None)
    return p.device if p is not None else fallback


def calib_images(data, limit: int) -> torch.Tensor:
    """The first ``limit`` calibration images (splits are stored in random order)."""
    calib = data.calib
    return calib.head(max(1, min(limit, len(calib))))


def module_width(mod: nn.Module, out: bool = True) -> int:
    for attr in ("num_features", "out_channels", "out_features") if out else ("in_channels",
                                                                              "in_features"):
        if hasattr(mod, attr):
            return int(getattr(mod, attr))
    raise ValueError(f"cannot tell the channel count of {type(mod).__name__}")
