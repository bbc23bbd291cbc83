"""First-k channel selection on a full-width network by input masks, and physical extraction.

Design (docs/algorithms.md §5, masking): every consumer of a group's channels (the
``in``-role members: convs, linears, :class:`IndexShortcut`) gets a forward pre-hook that
multiplies its input by a 0/1 mask keeping the group's first ``k`` channels (by the group's
channel index, mapped to the module's own indices through ``Member.idxs/root_idxs``).

Why input masks rather than output masks after BN: a channel that no consumer reads
is exactly a removed channel, whatever sits between producer and consumer (BN, an activation
with ``f(0) != 0``, a residual add, a parameter-free shortcut), so no conv->BN pairing has to be
known. BatchNorm statistics are per channel, so a removed channel never changes a kept one, in
train mode (batch statistics) as in eval mode. Hence ``extract(widths)`` (``prune_model`` with
``arange(k)``) and the masked network give the same logits.

Why masking rather than slicing: it works on any model the channel-group discovery handles,
with static shapes and no per-layer width logic. The price: every sub-network costs a full
forward/backward pass (slicing would cost about ``r**2``), so a training step of ``n + 1``
networks costs ``n + 1`` full passes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from searchprune.prune import prune_model
from searchprune.space import SearchSpace

__all__ = ["MaskedSupernet", "first_k_keep"]


def first_k_keep(space: SearchSpace, widths: Mapping[str, int]) -> dict[str, torch.Tensor]:
    """``{group: arange(width)}`` for every group narrower than full (the ``prune_model`` keep);
    in a group a grouped conv reads or writes, the first ``width / n`` channels of each of its
    ``n`` conv-groups, so every conv-group keeps as many channels and ``groups`` stays valid
    (:meth:`~searchprune.space.SearchSpace.first_indices`)."""
    return space.first_indices({k: int(v) for k, v in widths.items()})


class MaskedSupernet:
    """Hooks on ``model`` that make it behave as the first-k sub-network of ``set_widths``.

    The model itself is unchanged (its ``state_dict`` is that of a plain model); ``remove()``
    takes the hooks off. Groups not given to :meth:`set_widths` are full.
    """

    def __init__(self, model: nn.Module, space: SearchSpace) -> None:
        self.model = model
        self.space = space
        self._consumers: dict[str, list[tuple[str, torch.Tensor, torch.Tensor]]] = {}
        for g in space.prunable:
            for m in g.members:
                mod = model.get_submodule(m.module)
                if m.role == "in" and not isinstance(mod, nn.modules.batchnorm._BatchNorm):
                    idxs = torch.tensor(m.idxs, dtype=torch.long)
                    roots = torch.tensor(m.root_idxs, dtype=torch.long)
                    self._consumers.setdefault(m.module, []).append((g.name, idxs, roots))
        self._masks: dict[str, torch.Tensor] = {}
        self._handles: list = []
        self.widths: dict[str, int] = {}
        self._attach()

    # -- hooks --------------------------------------------------------------------------------
    def _attach(self) -> None:
        for name in self._consumers:
            mod = self.model.get_submodule(name)
            self._handles.append(mod.register_forward_pre_hook(self._hook(name)))

    def _hook(self, name: str):
        def apply(module: nn.Module, args: tuple) -> tuple | None:
            mask = self._masks.get(name)
            if mask is None:
                return None
            x = args[0]
            shape = (1, -1) + (1,) * (x.dim() - 2)
            return (x * mask.to(device=x.device, dtype=x.dtype).view(shape), *args[1:])

        return apply

    def remove(self) -> None:
        """Take the hooks off: the model is the plain full network again."""
        for h in self._handles:
            h.remove()
        self._handles = []

    @contextmanager
    def detached(self) -> Iterator[nn.Module]:
        """The model without hooks (for deep copies: hooks would be copied along)."""
        self.remove()
        try:
            yield self.model
        finally:
            self._attach()

    # -- widths -------------------------------------------------------------------------------
    def set_widths(self, widths: Mapping[str, int] | None) -> None:
        """Select the first ``widths[g]`` channels of every group, per conv-group where a
        grouped conv reads or writes it (:func:`first_k_keep`; ``None``: the full net)."""
        widths = {k: int(v) for k, v in (widths or {}).items()}
        for name, width in widths.items():
            group = self.space.group(name)
            if not group.prunable and width < group.channels:
                raise ValueError(f"group '{name}' is not prunable")
        keep = first_k_keep(self.space, widths)
        masks: dict[str, torch.Tensor] = {}
        for module, entries in self._consumers.items():
            mask = None
            for group, idxs, roots in entries:
                if group not in keep:
                    continue
                if mask is None:
                    mask = torch.ones(_in_channels(self.model.get_submodule(module)))
                mask[idxs] = torch.isin(roots, keep[group]).float()
            if mask is not None:
                masks[module] = mask
        self._masks = masks
        self.widths = widths

    @contextmanager
    def use(self, widths: Mapping[str, int] | None) -> Iterator[nn.Module]:
        """``with supernet.use(widths) as model:`` runs the sub-network, then the previous one."""
        previous = dict(self.widths)
        self.set_widths(widths)
        try:
            yield self.model
        finally:
            self.set_widths(previous)

    def extract(self, widths: Mapping[str, int]) -> nn.Module:
        """A physically smaller copy holding the first ``widths[g]`` channels of every group
        (BN statistics copied as they are; recalibrate before evaluating)."""
        with self.detached() as model:
            return prune_model(model, self.space, first_k_keep(self.space, widths))


def _in_channels(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.in_features
    return int(module.in_channels)  # Conv2d, IndexShortcut
