"""First-order (Taylor) estimates of what removing channels costs, for the cheap sensitivity
prior (``sensitivity.method: taylor``; the curves it yields are read like a scan's, see
:mod:`searchprune.search.sensitivity`).

A gate ``z = 1`` multiplies each group channel where it leaves its producers (the gate points of
the TE criterion: every BN output of the group, the option-A shortcut's output), one gate per
image. With ``L_n`` the cross-entropy of calibration image ``n`` against its label, the model in
eval mode, one backward pass of ``sum_n L_n`` gives every group's

    g[n, c] = dL_n / dz_{n, c} = sum over gate points, h, w of a * dL_n/da

for all groups at once (``a``: the gated activations). Removing a set ``S`` of a group's
channels sets their gates to 0, which changes image ``n``'s loss by about ``-sum_{c in S} g[n, c]``;
``S`` is the set the study's criterion removes at a width (its lowest-scored channels). The
estimated drop of the group pruned to that width is, by form (:data:`FORMS`):

- ``taylor``: the mean over images of ``|sum_{c in S} g[n, c]|`` (the first-order change of
  each image's loss, removals that cancel counted as such; nats per image);
- ``taylor-sq``: ``sum_{c in S}`` of the mean over images of ``g[n, c]^2`` (each channel's
  squared first-order change, summed as if independent: the TE criterion's importance, per
  image; nats squared).

Not top-1 points: only the order and the shape of the curves matter to the allocation, which
reads every group on one threshold.

Gradients are taken only with respect to the gates (:func:`torch.autograd.grad`), so parameters,
their ``.grad`` and the BN statistics are never touched.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from searchprune.criteria._common import gate_points, module_width, scale_channels
from searchprune.space import SearchSpace

__all__ = ["FORMS", "FirstOrder", "channel_contributions", "first_order_drops", "removal_drop",
           "removal_drop_squared"]


@dataclass
class FirstOrder:
    """Per group, ``(images, channels)`` float64 ``g[n, c]``; the images forwarded (and
    backpropagated: the same images) and the seconds the passes took."""

    per_image: dict[str, torch.Tensor]
    images: int
    seconds: float


def channel_contributions(model: nn.Module, space: SearchSpace, x: torch.Tensor,
                          y: torch.Tensor, *, batch_size: int,
                          device: torch.device) -> FirstOrder:
    """``g[n, c]`` of every prunable group on the images ``x`` (labels ``y``), one forward and
    one backward pass per batch of ``batch_size``."""
    start = time.perf_counter()
    owners: list[tuple[str, object]] = []
    widths: dict[str, int] = {}
    for g in space.prunable:
        for p in gate_points(model, g):
            widths.setdefault(p.module, module_width(model.get_submodule(p.module)))
            owners.append((g.name, p))
    current: dict[str, torch.Tensor] = {}
    handles = [model.get_submodule(name).register_forward_hook(
        lambda mod, args, out, name=name: scale_channels(out, current[name]))
        for name in widths]
    parts: dict[str, list[torch.Tensor]] = {g.name: [] for g in space.prunable}
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(y), batch_size):
            xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
            for name, w in widths.items():
                current[name] = torch.ones(len(yb), w, device=device, requires_grad=True)
            with torch.enable_grad():
                loss = F.cross_entropy(model(xb), yb, reduction="sum")
                names = list(current)
                grads = dict(zip(names, torch.autograd.grad(loss, [current[n] for n in names])))
            batch = {g.name: torch.zeros(len(yb), g.channels, dtype=torch.float64)
                     for g in space.prunable}
            for gname, p in owners:
                batch[gname].index_add_(1, p.roots, grads[p.module].double().cpu()[:, p.idxs])
            for gname, v in batch.items():
                parts[gname].append(v)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    per_image = {k: torch.cat(v) for k, v in parts.items()}
    return FirstOrder(per_image, int(len(y)), time.perf_counter() - start)


def _removed(per_image: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    removed = torch.ones(per_image.shape[1], dtype=torch.bool)
    removed[keep] = False
    return per_image[:, removed]


def removal_drop(per_image: torch.Tensor, keep: torch.Tensor) -> float:
    """``taylor``: mean over images of ``|sum of g[n, c] over the channels not in keep|``."""
    return float(_removed(per_image, keep).sum(dim=1).abs().mean())


def removal_drop_squared(per_image: torch.Tensor, keep: torch.Tensor) -> float:
    """``taylor-sq``: sum over the channels not in ``keep`` of the mean of ``g[n, c]^2``."""
    return float(_removed(per_image, keep).square().mean(dim=0).sum())


FORMS = {"taylor": removal_drop, "taylor-sq": removal_drop_squared}


def first_order_drops(model: nn.Module, space: SearchSpace, scores: Mapping[str, torch.Tensor],
                      x: torch.Tensor, y: torch.Tensor, points: Sequence[tuple[str, int]], *,
                      batch_size: int, device: torch.device,
                      form: str = "taylor") -> tuple[list[float], FirstOrder]:
    """The estimated drop (``form``, a key of :data:`FORMS`) of each ``(group, width)`` point
    (the group alone pruned to that width by ``scores``, highest kept) and the passes behind
    them."""
    drop = FORMS[form]
    fo = channel_contributions(model, space, x, y, batch_size=batch_size, device=device)
    out = []
    for group, width in points:
        keep = space.keep_indices({group: int(width)}, scores).get(group)
        out.append(0.0 if keep is None else drop(fo.per_image[group], keep))
    return out, fo
