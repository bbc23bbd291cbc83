"""ES: empirical sensitivity (PFP, Liebenwein et al. ICLR 2020), measured at the consumers.

For a consumer with weight V (``m x n x k x k``, or ``m x n`` for a linear layer) and input
feature map a >= 0, edge (i, j, q) at output position p contributes

    g_ijq(x, p) = V+_ijq a_j(x, p+q) / z+_i(x, p)   if V_ijq > 0
                  V-_ijq a_j(x, p+q) / z-_i(x, p)   if V_ijq < 0

with ``z+- = sum_{j,q} V+- a`` (bias excluded) and a ratio whose ``|z| <= eps(float32)`` taken as 0.
The sensitivity of input channel j is the max over images, output channels, positions and taps;
a group channel takes the max over all its dense consumers (depthwise and grouped convs are
skipped, and so is the parameter-free option-A shortcut, which only copies channels on).
Inputs that can be negative contribute their positive part and their negated negative part as
two samples. Higher = keep.

Because V+- does not depend on the image or position, the max factorises:
``s_e = max_i V+_ie * M+_ie`` (and likewise for V-) with ``M_ie = max_{x,p} a_e(x,p) / |z_i(x,p)|``;
M is a max-product of two non-negative matrices, kept as a running max over batches.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from searchprune.criteria._base import Criterion, register
from searchprune.criteria._common import calib_images, model_device

__all__ = ["EmpiricalSensitivity", "max_product"]

_log = logging.getLogger(__name__)
_EPS = torch.finfo(torch.float32).eps


def max_product(r: torch.Tensor, a: torch.Tensor, chunk_elems: int = 1 << 21) -> torch.Tensor:
    """``out[i, e] = max_t r[t, i] * a[t, e]`` for non-negative ``r (T, m)`` and ``a (T, E)``.

    One output row at a time over a transposed, contiguous ``(E, T)`` block (reducing along the
    contiguous axis into a reused buffer was several times faster than broadcasting to
    ``(T, m, E)``); ``T`` is cut into blocks of at most ``chunk_elems // E`` rows.
    """
    t, m = r.shape
    e = a.shape[1]
    out = torch.zeros(m, e, dtype=a.dtype, device=a.device)
    step = max(1, chunk_elems // max(1, e))
    row = torch.empty(e, dtype=a.dtype, device=a.device)
    for s in range(0, t, step):
        at = a[s : s + step].t().contiguous()  # (E, T')
        rt = r[s : s + step].t().contiguous()  # (m, T')
        buf = torch.empty_like(at)
        for i in range(m):
            torch.mul(at, rt[i], out=buf)
            torch.amax(buf, 1, out=row)
            torch.maximum(out[i], row, out=out[i])
    return out


def _patches(mod: nn.Module, a: torch.Tensor) -> torch.Tensor:
    """``(B * L, E)``: each row one output position's receptive field (E = n * k * k)."""
    if isinstance(mod, nn.Linear):
        return a.reshape(-1, a.shape[-1])
    cols = F.unfold(a, mod.kernel_size, dilation=mod.dilation, padding=mod.padding,
                    stride=mod.stride)  # (B, E, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


class _Tracker:
    """Running ``M+`` and ``M-`` of one consumer, updated from a forward pre-hook."""

    def __init__(self, mod: nn.Module, chunk_elems: int) -> None:
        self.mod = mod
        self.chunk_elems = chunk_elems
        w = mod.weight.detach().float().flatten(1)
        self.vp, self.vn = w.clamp(min=0), (-w).clamp(min=0)
        self.mp = torch.zeros_like(w)
        self.mn = torch.zeros_like(w)

    def __call__(self, mod, args) -> None:
        a = args[0].detach().float()
        if a.min() < 0:
            a = torch.cat([a.clamp(min=0), (-a).clamp(min=0)])
        cols = _patches(mod, a)
        for v, acc in ((self.vp, self.mp), (self.vn, self.mn)):
            z = cols @ v.t()  # (T, m), >= 0
            inv = torch.where(z > _EPS, 1.0 / z, torch.zeros_like(z))
            torch.maximum(acc, max_product(inv, cols, self.chunk_elems), out=acc)

    def sensitivity(self) -> torch.Tensor:
        """``(in_channels,)``: max over output channels and kernel taps."""
        s = torch.maximum(self.vp * self.mp, self.vn * self.mn).amax(0)
        n = self.mod.in_features if isinstance(self.mod, nn.Linear) else self.mod.in_channels
        return s.view(n, -1).amax(1)


def _dense_consumer(mod: nn.Module) -> bool:
    return isinstance(mod, nn.Linear) or (isinstance(mod, nn.Conv2d) and mod.groups == 1)


@register("es")
class EmpiricalSensitivity(Criterion):
    """Args:
    images: calibration images in S (the first ones of ``data.calib``).
    batch_size: images per forward pass.
    chunk_elems: largest intermediate tensor (elements) of the max-product.
    """

    needs_data = True

    def __init__(self, images: int = 128, batch_size: int = 8, chunk_elems: int = 1 << 21) -> None:
        self.images = int(images)
        self.batch_size = int(batch_size)
        self.chunk_elems = int(chunk_elems)

    def scores(self, model, space, data, *, device):
        dev = model_device(model, device)
        trackers: dict[str, _Tracker] = {}
        for g in space.prunable:
            for m in g.members:
                mod = model.get_submodule(m.module)
                if m.role == "in" and _dense_consumer(mod) and m.module not in trackers:
                    trackers[m.module] = _Tracker(mod, self.chunk_elems)
        handles = [model.get_submodule(n).register_forward_pre_hook(t)
                   for n, t in trackers.items()]
        x = calib_images(data, self.images)
        try:
            with torch.no_grad():
                for s in range(0, x.shape[0], self.batch_size):
                    model(x[s : s + self.batch_size].to(dev))
        finally:
            for h in handles:
                h.remove()
        per_module = {n: t.sensitivity().double().cpu() for n, t in trackers.items()}
        result = {}
        for g in space.prunable:
            score = torch.zeros(g.channels, dtype=torch.float64)
            found = False
            for m in g.members:
                if m.role == "in" and m.module in per_module:
                    found = True
                    vals = per_module[m.module][torch.tensor(m.idxs)]
                    score.scatter_reduce_(0, torch.tensor(m.root_idxs), vals, reduce="amax")
            if not found:
                _log.warning("ES: group %s has no dense consumer; all its channels score 0", g.name)
            result[g.name] = score
        return result
