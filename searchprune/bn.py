"""BatchNorm statistics re-estimated on a set of images: a supernet sub-network's recalibration
and the `abn` proxy of a pruned network (both need statistics that match the kept channels;
docs/algorithms.md §5)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from searchprune.data._bundle import Images

__all__ = ["bn_layers", "recalibrate_bn"]


def bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def recalibrate_bn(model: nn.Module, images: torch.Tensor | Images, *, batch_size: int = 256,
                   device: str | torch.device = "cpu") -> nn.Module:
    """Recompute every BN layer's running statistics on ``images`` and return ``model`` in eval
    mode.

    Statistics are reset and accumulated as a cumulative average (``momentum=None``) with the BN
    layers in train mode under ``no_grad``; every other layer stays in eval mode (no dropout
    noise). The layers' momenta are restored afterwards. A last batch of one image is skipped
    (BatchNorm cannot take it on 1x1 maps).
    """
    layers = bn_layers(model)
    model.to(device).eval()
    if not layers:
        return model
    momenta = [bn.momentum for bn in layers]
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                batch = images[start : start + batch_size]
                if len(batch) < 2 and start > 0:
                    break
                model(batch.to(device, non_blocking=True))
    finally:
        for bn, momentum in zip(layers, momenta):
            bn.momentum = momentum
        model.eval()
    return model
