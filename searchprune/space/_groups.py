"""Channel groups, discovered from the network's dependency graph (Torch-Pruning).

A group is a set of channels that must be pruned together: the output channels of every
producer writing into one residual stream, a depthwise conv and the conv feeding it, and the
input slices of every consumer reading them. Each member records, for every group channel, which
channel index of that module it is (``idxs[k]`` is the module index of group channel
``root_idxs[k]``), so a pruned net can be built from this description alone, without tracing again.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from searchprune.models._layers import IndexShortcut

__all__ = ["ChannelGroup", "IndexShortcutPruner", "Member", "discover_groups", "is_depthwise"]


@dataclass(frozen=True)
class Member:
    """One module touched by a group: its ``out`` or ``in`` channels."""

    module: str
    role: str
    idxs: tuple[int, ...]
    root_idxs: tuple[int, ...]


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that are kept or removed together; a configuration sets one width per group."""

    name: str
    channels: int
    members: tuple[Member, ...]
    prunable: bool
    kind: str

    def producers(self, model: nn.Module) -> list[Member]:
        """Members whose output channels are the group (convs and linears, depthwise excluded)."""
        out = []
        for m in self.members:
            mod = model.get_submodule(m.module)
            if m.role == "out" and isinstance(mod, (nn.Conv2d, nn.Linear)) and not is_depthwise(mod):
                out.append(m)
        return out


def is_depthwise(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


class IndexShortcutPruner(tp.pruner.BasePruningFunc):
    """Tells Torch-Pruning that an :class:`IndexShortcut`'s input and output channels are separate
    dimensions, and prunes it when Torch-Pruning itself prunes (the ``tp-global`` baseline;
    searchprune's own pruning is done by :mod:`searchprune.prune`)."""

    TARGET_MODULES = (IndexShortcut,)

    def prune_out_channels(self, layer: nn.Module, idxs):
        keep = torch.tensor(sorted(set(range(layer.out_channels)) - set(idxs)))
        layer.select(None, keep)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs):
        keep = torch.tensor(sorted(set(range(layer.in_channels)) - set(idxs)))
        layer.select(keep, None)
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.in_channels


def _role(handler) -> str:
    name = getattr(handler, "__name__", str(handler))
    return "in" if "in_channels" in name else "out"


def discover_groups(model: nn.Module, example: torch.Tensor, *,
                    prune_classifier_input: bool = False) -> list[ChannelGroup]:
    """All channel groups of ``model`` (in module order), the classifier's output excluded.

    The group that feeds the classifier is prunable only if it has a single producer or
    ``prune_classifier_input`` is set (the paper keeps the last residual stream whole).
    """
    names = {mod: name for name, mod in model.named_modules()}
    with torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(
            model, example_inputs=example,
            customized_pruners={IndexShortcut: IndexShortcutPruner()},
        )
    roots = list(graph.get_all_groups(root_module_types=(nn.Conv2d, nn.Linear)))
    groups: list[ChannelGroup] = []
    for group in roots:
        root = group[0].dep.target.module
        fn = group[0].dep.handler
        channels = graph.get_out_channels(root)
        full = graph.get_pruning_group(root, fn, idxs=list(range(channels)))
        members, outputs_model, feeds_classifier = [], False, False
        for item in full:
            mod = item.dep.target.module
            if not isinstance(mod, nn.Module) or mod not in names:
                continue
            role = _role(item.dep.handler)
            node = graph.module2node.get(mod)
            if role == "out" and node is not None and not node.outputs:
                outputs_model = True
            if role == "in" and node is not None and not node.outputs:
                feeds_classifier = True
            members.append(Member(names[mod], role, tuple(int(i) for i in item.idxs),
                                  tuple(int(i) for i in item.root_idxs)))
        if outputs_model or not members:
            continue
        members.sort(key=lambda m: (list(names.values()).index(m.module), m.role))
        groups.append(_make_group(model, members, channels, feeds_classifier,
                                  prune_classifier_input))
    order = list(names.values())
    groups.sort(key=lambda g: min(order.index(m.module) for m in g.members))
    return _unique_names(groups)


def _make_group(model, members, channels, feeds_classifier, prune_classifier_input):
    producers = [
        m.module for m in members
        if m.role == "out" and isinstance(model.get_submodule(m.module), (nn.Conv2d, nn.Linear))
        and not is_depthwise(model.get_submodule(m.module))
    ]
    residual = len(producers) > 1
    if residual:
        tops = [p.split(".")[0] for p in producers]
        # the stage most producers belong to; a tie (a stem plus one block) goes to the later one
        top = max(set(tops), key=lambda t: (tops.count(t), max(i for i, x in enumerate(tops)
                                                              if x == t)))
        name = f"{top}.residual"
    else:
        name = producers[0] if producers else members[0].module
    prunable = channels > 1 and (not (feeds_classifier and residual) or prune_classifier_input)
    kind = "residual" if residual else "internal"
    return ChannelGroup(name, channels, tuple(members), prunable, kind)


def _unique_names(groups: list[ChannelGroup]) -> list[ChannelGroup]:
    counts = Counter(g.name for g in groups)
    out = []
    for g in groups:
        if counts[g.name] > 1:
            first = next(m.module for m in g.members if m.role == "out")
            g = ChannelGroup(f"{first}.residual", g.channels, g.members, g.prunable, g.kind)
        out.append(g)
    return out
