"""Small helpers shared by tests."""

from __future__ import annotations

import torch
from torch import nn


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial, seeded BN affine parameters and running statistics; returns the model in
    eval mode (so pruning and reconstruction have something to get wrong)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def tiny_engine(proxy: str = "ls", model: nn.Module | None = None, **overrides):
    """A real :class:`~searchprune.engine.PruningEngine` on a randomised CIFAR ResNet-8 (option-A
    shortcuts) and 64 random 16x16 images (calibration, validation and test alike)."""
    from searchprune.config import Config, apply_overrides
    from searchprune.data._bundle import DataBundle, Split
    from searchprune.engine import PruningEngine
    from searchprune.models import CifarResNet

    torch.manual_seed(0)
    model = model if model is not None else randomize_bn(CifarResNet(8, 10, "pad"))
    x = torch.randn(64, 3, 16, 16) * 2 + 0.5  # statistics unlike the randomised BN's
    y = torch.randint(0, 10, (64,))
    data = DataBundle("tiny", 10, (3, 16, 16), (0.0,) * 3, (1.0,) * 3,
                      calib=Split(x, y), val=Split(x[:32], y[:32]), test=Split(x[:32], y[:32]))
    cfg = apply_overrides(Config(), {"pruning.proxy": proxy, "data.calib_size": 64,
                                     "device": "cpu", **overrides})
    return PruningEngine(cfg, model, data)
