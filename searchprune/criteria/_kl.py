"""KL: how much masking one group channel changes the prediction (CURL, Luo & Wu CVPR 2020).

``I_j = mean over images of KL(P || Q_j)`` (``direction="pq"``, the paper's) or ``KL(Q_j || P)``
(``"qp"``, what the CURL code computes), where P is the original network's softmax and Q_j the
softmax with group channel j masked. Masking means zeroing the channel at every place it leaves
its producers at once: the output of every BN member of the group (the same as setting its gamma
and beta to 0) and the option-A shortcut's output channel (see :func:`gate_points`), which
reproduces the physically pruned network. KL is computed in float64 from log-softmax.

Cost: one forward pass over the images per group channel. Two things make it cheaper:
``replicas`` masked channels share one pass (the image batch is repeated and a per-replica mask
applied by forward hooks), and the replication happens as late as possible, at the input of
the innermost module that encloses the group's first masked output and that every later
computation flows through (found by trying candidates on a tiny probe batch), so the shared
prefix of the network runs once per image batch rather than once per masked channel.
"""

from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F
from torch import nn

from searchprune.criteria._base import Criterion, register
from searchprune.criteria._common import (
    GatePoint,
    calib_images,
    gate_points,
    model_device,
    module_width,
    scale_channels,
)
from searchprune.space import ChannelGroup

__all__ = ["KLDivergence"]

_log = logging.getLogger(__name__)


class _Masked:
    """Forward hooks that repeat the batch ``k`` times at ``split`` (``""`` = the model input,
    done by the caller) and mask a different group channel in each replica."""

    def __init__(self, model: nn.Module, points: list[GatePoint], channels: int, split: str):
        self.model = model
        self.split = split
        self.maps = [
            (p.module, p.channel_map(channels, module_width(model.get_submodule(p.module))))
            for p in points
        ]
        self.k = 1
        self.masks: dict[str, torch.Tensor] = {}

    def set(self, chans: torch.Tensor, device: torch.device) -> None:
        """Replica r masks group channel ``chans[r]`` (-1: masks nothing)."""
        self.k = int(chans.numel())
        onehot = torch.zeros(self.k, self.maps[0][1].shape[0])
        valid = chans >= 0
        onehot[valid.nonzero().flatten(), chans[valid]] = 1.0
        self.masks = {name: (1.0 - (onehot @ cmap).clamp(max=1.0)).to(device)
                      for name, cmap in self.maps}

    def __enter__(self):
        self.handles = [self.model.get_submodule(name).register_forward_hook(
            lambda mod, args, out, name=name: scale_channels(out, self.masks[name]))
            for name, _ in self.maps]
        if self.split:
            self.handles.append(self.model.get_submodule(self.split).register_forward_pre_hook(
                lambda mod, args: (self._repeat(args[0]), *args[1:])))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()

    def _repeat(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat(self.k, *([1] * (x.dim() - 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x if self.split else self._repeat(x))


def _execution_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    order: list[str] = []
    names = {mod: name for name, mod in model.named_modules()}
    handles = [mod.register_forward_pre_hook(lambda m, a: order.append(names[m]))
               for mod in names]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return order


def _split_candidates(first: str) -> list[str]:
    """The first masked module, then its ancestors innermost first, then the model input."""
    parts = first.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)] + [""]


def _kl(logp: torch.Tensor, logq: torch.Tensor, direction: str) -> torch.Tensor:
    if direction == "pq":
        return (logp.exp() * (logp - logq)).sum(-1)
    return (logq.exp() * (logq - logp)).sum(-1)


@register("kl")
class KLDivergence(Criterion):
    """Args:
    images: calibration images (the first ones of ``data.calib``).
    direction: ``"pq"`` = KL(P || Q), the paper; ``"qp"`` = KL(Q || P), the CURL code.
    batch_size: images per pass.
    replicas: masked channels per pass (a pass holds ``batch_size * replicas`` images).
    """

    needs_data = True

    def __init__(self, images: int = 256, direction: str = "pq", batch_size: int = 64,
                 replicas: int = 8) -> None:
        if direction not in ("pq", "qp"):
            raise ValueError(f"direction must be 'pq' or 'qp', got {direction!r}")
        self.images = int(images)
        self.direction = direction
        self.batch_size = int(batch_size)
        self.replicas = max(1, int(replicas))

    def scores(self, model, space, data, *, device):
        dev = model_device(model, device)
        x = calib_images(data, self.images)
        start, passes = time.perf_counter(), 0
        with torch.no_grad():
            logp = torch.cat([self._logp(model(x[s : s + self.batch_size].to(dev)))
                              for s in range(0, x.shape[0], self.batch_size)])
            order = _execution_order(model, x[:1].to(dev))
            result = {}
            for g in space.prunable:
                masked = self._prepare(model, g, x, logp, order, dev)
                result[g.name], n = self._group(masked, g, x, logp, dev)
                passes += n
        _log.info("KL: %d masked channels x %d images in %d passes, %.1fs",
                  sum(g.channels for g in space.prunable), x.shape[0], passes,
                  time.perf_counter() - start)
        return result

    @staticmethod
    def _logp(logits: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(logits.double(), dim=-1).cpu()

    def _prepare(self, model, g: ChannelGroup, x, logp, order, dev) -> _Masked:
        """Masking hooks for ``g`` with the latest replication point that gives right answers."""
        points = gate_points(model, g)
        first = min((p.module for p in points), key=order.index)
        probe = x[[0, -1]].to(dev)  # two images (the same one twice if there is only one)
        want = self._logp(model(probe)).repeat(2, 1)
        for split in _split_candidates(first):
            masked = _Masked(model, points, g.channels, split)
            masked.set(torch.tensor([-1, -1]), dev)
            try:
                with masked:
                    got = self._logp(masked.forward(probe))
            except Exception:  # a tensor bypasses the split point: shapes do not match
                continue
            if got.shape == want.shape and torch.allclose(got, want, atol=1e-5, rtol=1e-4):
                _log.debug("KL: group %s replicated at %s", g.name, split or "the input")
                return masked
        raise RuntimeError(f"KL: cannot mask group {g.name}")  # "" always works

    def _group(self, masked: _Masked, g: ChannelGroup, x, logp, dev):
        total = torch.zeros(g.channels, dtype=torch.float64)
        passes = 0
        with masked:
            for c in range(0, g.channels, self.replicas):
                chans = torch.arange(c, min(c + self.replicas, g.channels))
                masked.set(chans, dev)
                k = chans.numel()
                for s in range(0, x.shape[0], self.batch_size):
                    xb, pb = x[s : s + self.batch_size].to(dev), logp[s : s + self.batch_size]
                    logq = self._logp(masked.forward(xb)).view(k, xb.shape[0], -1)
                    total[chans] += _kl(pb.unsqueeze(0), logq, self.direction).sum(1)
                    passes += 1
        return total / x.shape[0], passes
