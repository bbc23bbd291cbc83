"""Tiny networks with one layer kind each, as users write them (random init, any input size)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.convnext import LayerNorm2d


def _cbr(cin: int, cout: int, k: int = 3, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class ConcatNet(nn.Module):
    """A residual add, a concatenation feeding a depthwise conv (the issue's own CNN), a
    DenseNet-style concatenation feeding a BN, and a channel split."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _cbr(3, 8)
        self.res = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.act = nn.ReLU()
        self.branch_a = _cbr(8, 6, 1)
        self.branch_b = _cbr(8, 10)
        self.dw = _cbr(16, 16, 3, groups=16)
        self.grow = _cbr(16, 4)
        self.norm = nn.BatchNorm2d(20)
        self.relu = nn.ReLU()
        self.mix = nn.Conv2d(20, 12, 1)
        self.halfconv = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(12, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.act(x + self.res(x))
        x = self.dw(torch.cat([self.branch_a(x), self.branch_b(x)], 1))
        x = self.mix(self.relu(self.norm(torch.cat([x, self.grow(x)], 1))))
        a, b = x.chunk(2, dim=1)
        x = torch.cat([self.halfconv(a), b], 1)
        return self.fc(x.mean((2, 3)))


class GroupedNet(nn.Module):
    """A ResNeXt-style bottleneck: 1x1 -> grouped 3x3 (4 conv-groups) -> 1x1, plus a residual."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _cbr(3, 16)
        self.reduce = _cbr(16, 16, 1)
        self.grouped = _cbr(16, 16, 3, groups=4)
        self.expand = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.act = nn.ReLU()
        self.widen = nn.Conv2d(16, 24, 3, padding=1, groups=8)
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.act(x + self.expand(self.grouped(self.reduce(x))))
        return self.fc(self.widen(x).mean((2, 3)))


class ShuffleNet(nn.Module):
    """A channel shuffle (view, transpose, view) between two convs."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.a = _cbr(3, 8)
        self.b = _cbr(8, 8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a(x)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.fc(self.b(x).mean((2, 3)))


class NextNet(nn.Module):
    """A ConvNeXt block: depthwise 7x7, channels-last LayerNorm and MLP, a layer-scale
    parameter, LayerNorm2d before a strided conv."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 2, stride=2)
        self.dw = nn.Conv2d(16, 16, 7, padding=3, groups=16)
        self.norm = nn.LayerNorm(16)
        self.fc1 = nn.Linear(16, 32)
        self.gelu = nn.GELU()
        self.fc2 = nn.Linear(32, 16)
        self.layer_scale = nn.Parameter(torch.rand(16, 1, 1) + 0.5)
        self.down_norm = LayerNorm2d(16)
        self.down = nn.Conv2d(16, 24, 2, stride=2)
        self.head = nn.Linear(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(self.gelu(self.fc1(self.norm(y)))).permute(0, 3, 1, 2)
        x = x + self.layer_scale * y
        x = self.down(self.down_norm(x))
        return self.head(x.mean((2, 3)))


class AttnNet(nn.Module):
    """Patches -> multi-head self-attention (residual) -> MLP (residual) -> class token head."""

    def __init__(self, num_classes: int = 10, dim: int = 16) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 8, stride=8)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 32), nn.GELU(), nn.Linear(32, dim))
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1)
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return self.head(x[:, 0])


class ScaledConv(nn.Module):
    """A layer searchprune does not know: a conv written with F.conv2d on its own parameter."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, padding=1)


class CustomNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.a = _cbr(3, 8)
        self.custom = ScaledConv(8, 12)
        self.bn = nn.BatchNorm2d(12)
        self.b = _cbr(12, 8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.b(torch.relu(self.bn(self.custom(self.a(x)))))
        return self.fc(x.mean((2, 3)))


def attn_net(num_classes: int = 10) -> nn.Module:
    """A factory for ``model.name: _anynets:attn_net`` (patches of 32 px for 224-px inputs)."""
    net = AttnNet(num_classes)
    net.patch = nn.Conv2d(3, 16, 32, stride=32)
    return net
