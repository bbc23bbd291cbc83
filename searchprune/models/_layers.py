"""Parameter-free layers that the channel-group discovery knows how to prune."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["IndexShortcut"]


class IndexShortcut(nn.Module):
    """The CIFAR ResNet "option A" shortcut written as an index map.

    ``out[:, i] = x[:, src[i], ::stride, ::stride]`` where ``src[i] >= 0`` and zero where
    ``src[i] == -1``. With ``src = [-1]*pad + range(in) + [-1]*pad`` it equals the classic
    ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad))``, but unlike ``F.pad`` its input and
    output channels are separate dimensions, so pruning one stage's residual stream remaps the
    next stage's shortcut instead of coupling the streams.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2) -> None:
        super().__init__()
        pad = (out_channels - in_channels) // 2
        if pad < 0 or in_channels + 2 * pad != out_channels:
            raise ValueError(f"cannot pad {in_channels} channels to {out_channels}")
        src = torch.full((out_channels,), -1, dtype=torch.long)
        src[pad : pad + in_channels] = torch.arange(in_channels)
        # Not persistent: checkpoints of the classic option-A ResNets have no such entry.
        self.register_buffer("src", src, persistent=False)
        self.in_channels = in_channels
        self.stride = stride

    @property
    def out_channels(self) -> int:
        return int(self.src.numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        # One extra all-zero channel at index in_channels serves every src == -1 entry; a static
        # gather keeps the module traceable and exportable (no data-dependent shapes).
        zero = x.new_zeros((x.shape[0], 1, x.shape[2], x.shape[3]))
        index = torch.where(self.src >= 0, self.src, torch.full_like(self.src, x.shape[1]))
        return torch.cat([x, zero], dim=1).index_select(1, index)

    def select(self, keep_in: torch.Tensor | None, keep_out: torch.Tensor | None) -> None:
        """Keep the given input/output channels (sorted index tensors), remapping ``src``."""
        src = self.src
        if keep_out is not None:
            src = src[keep_out]
        if keep_in is not None:
            remap = torch.full((self.in_channels,), -1, dtype=torch.long)
            remap[keep_in] = torch.arange(keep_in.numel())
            src = torch.where(src >= 0, remap[src.clamp(min=0)], src)
            self.in_channels = int(keep_in.numel())
        self.src = src.clone()

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, stride={self.stride}"
