"""Channel groups, discovered from the network's dependency graph (Torch-Pruning).

A group is a set of channels that must be pruned together: the output channels of every
producer writing into one residual stream, a depthwise conv and the conv feeding it, and the
input slices of every consumer reading them. Each member records, for every group channel, which
channel index of that module it is (``idxs[k]`` is the module index of group channel
``root_idxs[k]``), so a pruned net can be built from this description alone, without tracing again.

Every member of a group covers all of the group's channels the same number of times: where
Torch-Pruning's group is only partly read by some member (a concatenation feeding a depthwise
conv, a split), it is cut into such parts, so each part's width enters every layer's channel
count linearly and the analytic cost is exact whichever channels the criterion keeps.

A group that touches something searchprune cannot slice exactly (an unsupported layer type, a
channel permutation, a module called twice) is kept whole: ``prunable`` is False and ``reason``
says why (module, type, reason).
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from searchprune.models._layers import IndexShortcut
from searchprune.space._trace import (
    DEFAULT_MEMORY_GB,
    DEFAULT_SECONDS,
    IndexShortcutPruner,
    Trace,
    discovery_budget,
    trace_model,
)

__all__ = ["ChannelGroup", "IndexShortcutPruner", "Member", "ParamMember", "discover",
           "discover_groups", "is_depthwise", "is_grouped"]


@dataclass(frozen=True)
class Member:
    """One module touched by a group: its ``out`` or ``in`` channels."""

    module: str
    role: str
    idxs: tuple[int, ...]
    root_idxs: tuple[int, ...]


@dataclass(frozen=True)
class ParamMember:
    """A bare parameter (not owned by a layer searchprune knows, e.g. a layer scale), pruned along
    ``dim``."""

    name: str
    dim: int
    idxs: tuple[int, ...]
    root_idxs: tuple[int, ...]


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that are kept or removed together; a configuration sets one width per group.

    ``calls`` are the activation calls whose output carries the group's channels (``module``
    is the call key, see :class:`~searchprune.space._trace.Call`); ``blocks`` gives each channel's
    conv-group where a grouped conv reads or writes the group: every block keeps the same number
    of channels, so widths are multiples of :attr:`unit`.
    """

    name: str
    channels: int
    members: tuple[Member, ...]
    prunable: bool
    kind: str
    reason: str = ""
    params: tuple[ParamMember, ...] = ()
    calls: tuple[Member, ...] = ()
    blocks: tuple[int, ...] | None = None

    @property
    def unit(self) -> int:
        """Widths are multiples of this (the number of conv-groups, or 1)."""
        return 1 if self.blocks is None else len(set(self.blocks))

    def producers(self, model: nn.Module) -> list[Member]:
        """Members whose output channels are the group (convs and linears, depthwise excluded)."""
        out = []
        for m in self.members:
            mod = model.get_submodule(m.module)
            if m.role == "out" and isinstance(mod, (nn.modules.conv._ConvNd, nn.Linear)) \
                    and not is_depthwise(mod):
                out.append(m)
        return out

    def fixed(self, reason: str) -> ChannelGroup:
        """This group, not searched, for ``reason``."""
        return replace(self, prunable=False, reason=reason)


def is_depthwise(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.modules.conv._ConvNd)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


def is_grouped(module: nn.Module) -> bool:
    """A grouped conv that is not depthwise (ResNeXt, RegNet)."""
    return (isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1
            and not is_depthwise(module))


def _role(handler) -> str:
    name = getattr(handler, "__name__", str(handler))
    return "in" if "in_channels" in name else "out"


# -- raw items of one Torch-Pruning group ---------------------------------------------------------
@dataclass
class _Item:
    kind: str  # module | param | call | op
    key: str  # module name, parameter name, call key, or op description
    role: str
    idxs: np.ndarray
    roots: np.ndarray
    dim: int = 0  # param: pruning dim
    node: object = None


def _items(group, names: dict, trace: Trace) -> tuple[list[_Item], bool, int]:
    """The members of one Torch-Pruning group; whether it reaches the model output; channels."""
    items: list[_Item] = []
    to_output = False
    channels = len(group[0].idxs)
    for item in group:
        node = item.dep.target
        mod = node.module
        idxs = np.asarray([int(i) for i in item.idxs], dtype=np.int64)
        roots = np.asarray([int(r) if r is not None else -1 for r in item.root_idxs],
                           dtype=np.int64)
        if isinstance(mod, tp.ops._OutputOp):
            to_output = True
        elif isinstance(mod, nn.Parameter):
            name = trace.param_names.get(mod, "parameter")
            items.append(_Item("param", name, "out", idxs, roots, int(node.pruning_dim)))
        elif isinstance(mod, nn.Module) and mod in names:
            role = _role(item.dep.handler)
            if role == "out" and not node.outputs:
                to_output = True
            items.append(_Item("module", names[mod], role, idxs, roots, node=node))
        else:
            call = trace.call_of.get(node.grad_fn)
            if call is not None:
                items.append(_Item("call", trace.calls[call].key, "out", idxs, roots))
            items.append(_Item("op", repr(mod), "out", idxs, roots, node=node))
    return items, to_output, channels


def _atoms(items: list[_Item], channels: int) -> list[np.ndarray]:
    """Root channels grouped by how many indices every member has for them (sorted arrays)."""
    cols = [np.bincount(it.roots[it.roots >= 0], minlength=channels)[:channels]
            for it in items if it.kind != "op"]
    if not cols:
        return [np.arange(channels)]
    sig = np.stack(cols, axis=1)
    _, first, labels = np.unique(sig, axis=0, return_index=True, return_inverse=True)
    labels = labels.reshape(-1)
    order = np.argsort(first)
    return [np.flatnonzero(labels == a) for a in order]


def _restrict(items: list[_Item], atom: np.ndarray, channels: int) -> list[_Item]:
    pos = np.full(channels, -1, dtype=np.int64)
    pos[atom] = np.arange(atom.size)
    out = []
    for it in items:
        mask = (it.roots >= 0) & (pos[np.clip(it.roots, 0, None)] >= 0)
        if mask.any():
            out.append(_Item(it.kind, it.key, it.role, it.idxs[mask], pos[it.roots[mask]],
                             it.dim, it.node))
    return out


# -- what cannot be sliced exactly --------------------------------------------------------------
def _module_problem(model: nn.Module, name: str, trace: Trace) -> str | None:
    mod = model.get_submodule(name)
    kind = type(mod).__name__
    if trace.counts.get(name, 0) > 1 and any(True for _ in mod.parameters(recurse=False)):
        return f"{name} ({kind}) is called {trace.counts[name]} times per forward pass"
    if isinstance(mod, nn.modules.conv._ConvNd):
        if mod.transposed:
            return f"{name} ({kind}): transposed convolutions are not supported"
        if mod.groups > 1 and mod.groups == mod.out_channels != mod.in_channels:
            return f"{name} ({kind}): groups == out_channels != in_channels is not supported"
        return None
    if isinstance(mod, (nn.Linear, nn.modules.batchnorm._BatchNorm, IndexShortcut, nn.PReLU)):
        return None
    if isinstance(mod, nn.LayerNorm):
        if len(mod.normalized_shape) == 1:
            return None
        return f"{name} ({kind}) normalizes over several dimensions"
    return f"{name} ({kind}): searchprune cannot prune this layer type"


_PERMUTING = ("PixelShuffle", "PixelUnshuffle", "ChannelShuffle", "NativeChannelShuffle")
_INDEXING = ("IndexSelect", "Gather", "Scatter", "Select", "Flip", "Roll", "Index", "Take",
             "Sort", "Narrow")


def _saved_dims(fn, base: str) -> list[int] | None:
    if base == "Index":
        indices = getattr(fn, "_saved_indices", None)
        return None if indices is None else [i for i, t in enumerate(indices) if t is not None]
    for attr in ("_saved_dim", "_saved_dims"):
        if hasattr(fn, attr):
            value = getattr(fn, attr)
            return [int(v) for v in value] if isinstance(value, (tuple, list)) else [int(value)]
    return None


def _op_problem(it: _Item, trace: Trace) -> str | None:
    node = it.node
    fn = getattr(node, "grad_fn", None)
    if fn is None:
        return None
    if not hasattr(fn, "name"):
        return f"a custom autograd function ({type(fn).__name__}) with an unknown channel mapping"
    name = fn.name()
    base = name.rstrip("0123456789").removesuffix("Backward")
    shapes = trace.shapes.get(fn)
    top = int(it.idxs.max()) + 1 if it.idxs.size else 0
    if isinstance(node.module, tp.ops._ReshapeOp):
        return _reshape_problem(node, shapes, top, int(np.unique(it.idxs).size))
    if isinstance(node.module, tp.ops._ConcatOp):
        return _concat_problem(node, trace, top)
    if isinstance(node.module, (tp.ops._SplitOp, tp.ops._UnbindOp)):
        return _split_problem(node, trace, top)
    if base in _PERMUTING:
        return f"{base} permutes channels"
    if base in _INDEXING:
        dims = _saved_dims(fn, base)
        in_shape = shapes[0] if shapes else getattr(fn, "_saved_self_sym_sizes", None)
        if dims is None or in_shape is None:
            return f"{name}: unknown channel mapping"
        for d in dims:
            d %= max(1, len(in_shape))
            if d > 0 and in_shape[d] >= top:
                return f"{name} on dimension {d} may index channels"
    return None


def _reshape_problem(node, shapes, top: int, covered: int) -> str | None:
    from torch_pruning.dependency.index_mapping import _FlattenIndexMapping

    mapped = any(isinstance(mp, _FlattenIndexMapping)
                 for dep in node.dependencies for mp in dep.index_mapping)
    if mapped:
        return None
    if shapes is None or shapes[0] is None:
        shapes = _reshape_shapes(node)
    if shapes is None:
        return "a reshape with unknown shapes"
    src, out = shapes
    if len(src) >= 2 and len(out) >= 2 and src[1] == out[1] and src[1] >= top:
        return None
    # channels last: dim 1 cannot hold them, or the last dim is exactly the group's channels
    # and dim 1 is not (tokens or rows of a channels-last map outnumbering the channels; the
    # rule the cost model reads channel dimensions by)
    channels_last = (len(src) < 3 or src[1] < top
                     or (src[-1] == covered and src[1] != covered))
    if src and out and src[-1] == out[-1] and src[-1] >= top and channels_last:
        return None
    return f"a reshape {tuple(src)} -> {tuple(out)} moves channels (such as a channel shuffle)"


def _ranges(sizes: list[int], used: list[bool]) -> list[tuple[int, int]]:
    """Channel ranges of the parts that are ``used``, in a concatenation of ``sizes``."""
    out, pos = [], 0
    for size, u in zip(sizes, used, strict=True):
        if u:
            out.append((pos, pos + size))
        pos += size
    return out


def _tp_ranges(node) -> list[tuple[int, int]] | None:
    offsets = node.module.offsets
    if offsets is None or not node.enable_index_mapping:
        return None
    return [(int(offsets[i]), int(offsets[i + 1])) for i in range(len(offsets) - 1)]


def _concat_problem(node, trace: Trace, top: int) -> str | None:
    """Torch-Pruning maps a concatenation along dim 1 by input offsets; check them (and that
    a concatenation along another dimension does not carry the channels)."""
    fn = node.grad_fn
    parts = trace.parts.get(fn)
    dim = getattr(fn, "_saved_dim", None)
    if parts is None or dim is None:
        return "a concatenation with unknown shapes"
    ndim = len(parts[0][0])
    dim %= max(1, ndim)
    sizes = [shape[dim] for shape, _ in parts]
    along_channels = dim == 1 and sum(sizes) >= top
    if not along_channels:
        last = dim == ndim - 1 and ndim >= 3 and sum(sizes) >= top
        return "a concatenation along the channels-last dimension" if last else None
    if len(set(map(id, node.inputs))) != len(node.inputs):
        return "a concatenation of the same tensor twice"
    if _tp_ranges(node) != _ranges(sizes, [grad for _, grad in parts]):
        return "a concatenation Torch-Pruning maps at the wrong channel offsets"
    return None


def _split_problem(node, trace: Trace, top: int) -> str | None:
    """Torch-Pruning maps its i-th consumer to the i-th part of a split along dim 1; check that
    consumer i reads part i and the offsets are the parts' real sizes."""
    fn = node.grad_fn
    outs = trace.outs.get(fn)
    dim = getattr(fn, "_saved_dim", None)
    if outs is None or dim is None:
        return "a split with unknown shapes"
    ndim = len(outs[0])
    dim %= max(1, ndim)
    sizes = [shape[dim] for shape in outs]
    if not (dim == 1 and sum(sizes) >= top):
        last = dim == ndim - 1 and ndim >= 3 and sum(sizes) >= top
        return "a split along the channels-last dimension" if last else None
    real = _ranges(sizes, [True] * len(sizes))
    mapped = _tp_ranges(node)
    if mapped is None:
        return "a split Torch-Pruning cannot map"
    for i, consumer in enumerate(node.outputs):
        nrs = [nr for f, nr in getattr(consumer.grad_fn, "next_functions", ()) if f is fn]
        if len(nrs) != 1 or i >= len(mapped) or mapped[i] != real[nrs[0]]:
            return "a split Torch-Pruning maps to the wrong consumers"
    return None


def _reshape_shapes(node):
    """(input, output) shape of a reshape done inside an operator (the flatten of leading
    dimensions before a matrix product in ``F.linear``), from what autograd saved."""
    src = getattr(node.grad_fn, "_saved_self_sym_sizes", None)
    for out in node.outputs:
        size = getattr(getattr(out, "grad_fn", None), "_saved_mat1_sym_sizes", None)
        if src is not None and size is not None:
            return tuple(int(s) for s in src), tuple(int(s) for s in size)
    return None


def _blocks(model: nn.Module, items: list[_Item], channels: int):
    """(conv-group id per channel or None, problem or None) for the grouped convs in a group."""
    partition = None
    for it in items:
        if it.kind != "module":
            continue
        mod = model.get_submodule(it.key)
        if not is_grouped(mod):
            continue
        where = f"{it.key} ({type(mod).__name__}, groups={mod.groups})"
        total = mod.in_channels if it.role == "in" else mod.out_channels
        size = total // mod.groups
        if it.idxs.size != channels or np.unique(it.roots).size != channels:
            return None, f"{where}: its channels repeat within a group"
        blk = it.idxs // size
        if np.any(np.bincount(blk, minlength=mod.groups)[np.unique(blk)] != size):
            return None, f"{where}: its conv-groups span several channel groups"
        ids = np.empty(channels, dtype=np.int64)
        ids[it.roots] = blk
        _, relabel = np.unique(ids, return_inverse=True)
        first = {}
        labels = tuple(first.setdefault(int(b), len(first)) for b in relabel.reshape(-1))
        if partition is not None and labels != partition:
            return None, f"{where}: conv-groups differ from another grouped conv's"
        partition = labels
        if size == 1:
            return None, f"{where}: one channel per conv-group"
    return partition, None


# -- discovery ----------------------------------------------------------------------------------
def discover(model: nn.Module, example: torch.Tensor, *, prune_classifier_input: bool = False,
             seconds: float = DEFAULT_SECONDS, memory_gb: float = DEFAULT_MEMORY_GB,
             ) -> tuple[list[ChannelGroup], Trace]:
    """All channel groups of ``model`` (in module order; the classifier's output excluded) and
    the trace they came from. Bounded by ``seconds`` and ``memory_gb`` (a one-line ModelError).

    The group that feeds the classifier is prunable only if it has a single producer or
    ``prune_classifier_input`` is set (the paper keeps the last residual stream whole).
    """
    names = {mod: name for name, mod in model.named_modules()}
    order = {n: i for i, n in enumerate(names.values())}
    with discovery_budget(seconds, memory_gb, "channel-group discovery"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Torch-Pruning's notes on unwrapped parameters etc.
        trace = trace_model(model, example)
        raw, heads = [], set()
        roots = (nn.modules.conv._ConvNd, nn.Linear)
        for group in trace.graph.get_all_groups(root_module_types=roots):
            items, to_output, channels = _items(group, names, trace)
            if to_output:
                heads.update(it.key for it in items if it.kind == "module" and it.role == "out")
                continue
            raw.append((items, channels))
    groups: list[ChannelGroup] = []
    for items, channels in raw:
        feeds = any(it.kind == "module" and it.role == "in" and it.key in heads for it in items)
        for atom in _atoms(items, channels):
            part = _restrict(items, atom, channels) if atom.size < channels else items
            if not any(it.kind in ("module", "param") for it in part):
                continue
            groups.append(_make_group(model, part, int(atom.size), feeds, prune_classifier_input,
                                      trace, order))
    groups.sort(key=lambda g: min(order[m.module] for m in g.members) if g.members else 0)
    return _unique_names(groups), trace


def discover_groups(model: nn.Module, example: torch.Tensor, *,
                    prune_classifier_input: bool = False) -> list[ChannelGroup]:
    """The channel groups of ``model`` (see :func:`discover`)."""
    return discover(model, example, prune_classifier_input=prune_classifier_input)[0]


def _tuple(a: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in a)


def _make_group(model, items, channels, feeds_classifier, prune_classifier_input, trace, order):
    members = sorted(
        (Member(it.key, it.role, _tuple(it.idxs), _tuple(it.roots))
         for it in items if it.kind == "module"),
        key=lambda m: (order[m.module], m.role))
    params = tuple(ParamMember(it.key, it.dim, _tuple(it.idxs), _tuple(it.roots))
                   for it in items if it.kind == "param")
    calls = tuple(Member(it.key, "out", _tuple(it.idxs), _tuple(it.roots))
                  for it in items if it.kind == "call")
    producers = [m.module for m in members if m.role == "out" and isinstance(
        model.get_submodule(m.module), (nn.modules.conv._ConvNd, nn.Linear))
        and not is_depthwise(model.get_submodule(m.module))]
    residual = len(producers) > 1
    if residual:
        tops = [p.split(".")[0] for p in producers]
        # the stage most producers belong to; a tie (a stem plus one block) goes to the later one
        top = max(set(tops), key=lambda t: (tops.count(t), max(i for i, x in enumerate(tops)
                                                              if x == t)))
        name = f"{top}.residual"
    else:
        name = producers[0] if producers else (members[0].module if members else params[0].name)
    blocks, problem = _blocks(model, items, channels)
    layers = [_module_problem(model, it.key, trace) for it in items if it.kind == "module"]
    ops = [_op_problem(it, trace) for it in items if it.kind == "op"]
    # the first problem names the module, its type and the reason; the rest adds nothing a
    # user needs to keep the group whole
    found = [r for r in [problem, *layers, *ops] if r]
    reasons = found[:1]
    if channels <= 1:
        reasons.append("a single channel")
    if feeds_classifier and residual and not prune_classifier_input:
        reasons.append("the residual stream feeding the classifier (set "
                       "pruning.prune_classifier_input to search it)")
    kind = "residual" if residual else "internal"
    return ChannelGroup(name, channels, tuple(members), not reasons, kind, "; ".join(reasons),
                        params, calls, blocks)


def _unique_names(groups: list[ChannelGroup]) -> list[ChannelGroup]:
    counts = Counter(g.name for g in groups)
    renamed = []
    for g in groups:
        outs = [m.module for m in g.members if m.role == "out"]
        if counts[g.name] > 1 and outs:
            g = replace(g, name=f"{outs[0]}.residual")
        renamed.append(g)
    seen: Counter = Counter()
    out = []
    for g in renamed:
        seen[g.name] += 1
        out.append(g if seen[g.name] == 1 else replace(g, name=f"{g.name}.{seen[g.name]}"))
    return out
