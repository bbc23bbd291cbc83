"""FLOPs and parameter counts, the paper's convention (docs/algorithms.md §4).

MACs = every multiply-accumulate of a forward pass as ``torch.utils.flop_counter`` counts them
(convolutions, linears, matrix products, attention), halved; FLOPs = MACs + one per normalization
output element + one per activation-module output element; params = all trainable parameters
(weights, biases, norm affine, bare parameters), no buffers.

:func:`count_cost` measures a concrete network. :class:`CostModel` is built once from the traced
forward pass of the unpruned network and its channel groups, and computes the cost of any width
configuration analytically: every layer's input and output channel count is a linear form in
the group widths (``const + sum mult_g * w_g``, read off the group members, the same description
:mod:`searchprune.prune` slices by), so each cost is a sum of ``coef * v[a] * v[b]`` terms over
``v = [1, w_1, ..., w_G]``: a few microseconds per configuration. Compute the model does not
attribute to a layer (attention matmuls, functional convolutions) is a constant; the exactness
check (:mod:`searchprune.space._check`) makes sure it is.
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from searchprune.models._layers import IndexShortcut
from searchprune.space._groups import ChannelGroup, is_depthwise
from searchprune.space._trace import _ACTIVATIONS, _NORMS, Call, Trace

__all__ = ["Cost", "CostModel", "count_cost", "forward_hooks", "layer_role", "linear_form",
           "member_cover"]

Form = list[tuple[int, float]]  # (index into the width vector, 0 = the constant 1; coefficient)


@dataclass(frozen=True)
class Cost:
    """Per-image cost: ``flops`` (paper convention), plain ``macs``, and ``params``."""

    flops: int
    macs: int
    params: int


@contextlib.contextmanager
def forward_hooks(modules: Iterable[nn.Module],
                  hook: Callable[[nn.Module, tuple, object], None]) -> Iterator[None]:
    """``hook`` registered as a forward hook on every one of ``modules`` inside the block."""
    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _leaves(model: nn.Module):
    return [(n, m) for n, m in model.named_modules() if not list(m.children())]


def _sdpa_cpu(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _custom_flops() -> dict:
    ops = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        ops[op] = _sdpa_cpu
    return ops


def count_cost(model: nn.Module, example: torch.Tensor) -> Cost:
    """Count FLOPs/MACs of one forward pass (per image) and the trainable parameters.

    Runs with autograd enabled so attention takes its counted (non-fused) path.
    """
    extra = 0.0
    batch = example.shape[0]

    def hook(mod, inputs, out):
        nonlocal extra
        out = out[0] if isinstance(out, (tuple, list)) else out
        if isinstance(mod, _NORMS + _ACTIVATIONS) and isinstance(out, torch.Tensor):
            extra += out.numel() / batch

    counter = FlopCounterMode(display=False, custom_mapping=_custom_flops())
    with forward_hooks((m for _, m in _leaves(model)), hook), counter, torch.enable_grad():
        model(example)
    macs = counter.get_total_flops() / 2 / batch
    params = sum(p.numel() for p in model.parameters())
    return Cost(int(round(macs + extra)), int(round(macs)), int(params))


def _full_dim(mod: nn.Module, role: str) -> int | None:
    """The size of a layer's channel dimension (input or output side)."""
    if isinstance(mod, (nn.modules.conv._ConvNd, IndexShortcut)):
        return int(mod.in_channels if role == "in" else mod.out_channels)
    if isinstance(mod, nn.Linear):
        return int(mod.in_features if role == "in" else mod.out_features)
    if isinstance(mod, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
        return int(mod.num_features)
    if isinstance(mod, nn.LayerNorm):
        return int(mod.normalized_shape[-1])
    if isinstance(mod, nn.GroupNorm):
        return int(mod.num_channels)
    if isinstance(mod, nn.PReLU):
        return int(mod.num_parameters)
    return None


def member_cover(groups: Sequence[ChannelGroup]
                 ) -> dict[tuple[str, str], list[tuple[int, float, int]]]:
    """Per (module, role): ``(group index from 1, multiplier, indices)`` of every group that
    covers part of that layer side (its channel count is :func:`linear_form` of this)."""
    cover: dict[tuple[str, str], list[tuple[int, float, int]]] = defaultdict(list)
    for gi, g in enumerate(groups, start=1):
        for m in g.members:
            cover[(m.module, m.role)].append((gi, len(m.idxs) / g.channels, len(m.idxs)))
    return cover


def linear_form(full: int, cover: Sequence[tuple[Any, ...]]) -> Form:
    """A channel count as ``const + sum mult_g * w_g``: the channels no group covers are
    constant, each covering group adds its multiplier times its width."""
    const = full - sum(c[2] for c in cover)
    return [(0, float(const))] + [(gi, mult) for gi, mult, *_ in cover]


def layer_role(mod: nn.Module, role: str) -> str:
    """The side whose form gives a layer's ``role`` channels (a depthwise conv's input is its
    output's)."""
    return "out" if is_depthwise(mod) else role


class _Forms:
    """The linear channel-count form of every (module, role), call, and bare parameter."""

    def __init__(self, model: nn.Module, groups: Sequence[ChannelGroup], trace: Trace) -> None:
        self.model = model
        self.cover = member_cover(groups)
        self.call_cover: dict[str, list[tuple[int, float, int, int]]] = defaultdict(list)
        self.param_cover: dict[str, list[tuple[int, float, int]]] = defaultdict(list)
        for gi, g in enumerate(groups, start=1):
            for c in g.calls:
                self.call_cover[c.module].append(
                    (gi, len(c.idxs) / g.channels, len(c.idxs), max(c.idxs) + 1))
            for p in g.params:
                self.param_cover[p.name].append((gi, len(p.idxs) / g.channels, len(p.idxs)))

    @staticmethod
    def _form(full: int, cover) -> Form:
        return linear_form(full, cover)

    def module(self, name: str, role: str) -> Form:
        mod = self.model.get_submodule(name)
        role = layer_role(mod, role)
        full = _full_dim(mod, role)
        if full is None:
            return [(0, 1.0)]
        return self._form(full, self.cover.get((name, role), []))

    def call(self, call: Call) -> tuple[Form, int]:
        """The output channel form of a call and the full size of that channel dimension."""
        cover = self.call_cover.get(call.key)
        if cover:
            top = max(c[3] for c in cover)
            covered = sum(c[2] for c in cover)
            full = _channel_dim_size(call.shape, top, covered)
            return self._form(full, cover), full
        mod = self.model.get_submodule(call.module)
        full = _full_dim(mod, "out")
        if full is None or not self.cover.get((call.module, "out")):
            return [(0, 1.0)], 1
        return self.module(call.module, "out"), full

    def param(self, name: str, p: torch.Tensor, dim: int) -> Form:
        full = int(p.shape[dim])
        return self._form(full, self.param_cover[name])


def _channel_dim_size(shape: tuple[int, ...], top: int, covered: int) -> int:
    """The size of the dimension of an activation's output that holds the group channels: dim 1
    (NCHW) unless it is too small for them and the last one fits (channels-last)."""
    if len(shape) < 2:
        return int(shape[-1]) if shape else covered
    if shape[1] >= top and not (len(shape) >= 3 and shape[-1] == covered and shape[1] != covered):
        return int(shape[1])
    if shape[-1] >= top:
        return int(shape[-1])
    return covered


def _scale(form: Form, k: float) -> Form:
    return [(i, c * k) for i, c in form]


def _times(a: Form, b: Form, k: float) -> list[tuple[float, int, int]]:
    return [(k * ca * cb, ia, ib) for ia, ca in a for ib, cb in b]


def _linear(a: Form, k: float) -> list[tuple[float, int, int]]:
    return [(k * c, i, 0) for i, c in a]


class CostModel:
    """Analytic cost of a width configuration, from the traced unpruned network."""

    def __init__(self, model: nn.Module, example: torch.Tensor, groups: Sequence[ChannelGroup],
                 trace: Trace) -> None:
        self.groups = list(groups)
        self._index = {g.name: i + 1 for i, g in enumerate(self.groups)}
        self._full = np.array([1.0] + [float(g.channels) for g in self.groups])
        forms = _Forms(model, self.groups, trace)
        macs = _compute_terms(model, trace, forms)
        extras = _extra_terms(trace, forms)
        params = _param_terms(model, self.groups, forms)
        counted = count_cost(model, example[:1])
        macs.append((counted.macs - _value(macs, self._full), 0, 0))
        extras.append((counted.flops - counted.macs - _value(extras, self._full), 0, 0))
        self.unattributed_macs = int(round(macs[-1][0]))
        self._terms = {k: _pack(v) for k, v in
                       (("flops", macs + extras), ("macs", macs), ("params", params))}

    def vector(self, widths: dict[str, int]) -> np.ndarray:
        v = self._full.copy()
        for name, w in widths.items():
            v[self._index[name]] = w
        return v

    def cost(self, widths: dict[str, int]) -> Cost:
        v = self.vector(widths)
        vals = {}
        for key, (coef, a, b) in self._terms.items():
            vals[key] = int(round(float(np.dot(coef, v[a] * v[b]))))
        return Cost(vals["flops"], vals["macs"], vals["params"])


def _value(terms, v: np.ndarray) -> float:
    return float(sum(c * v[a] * v[b] for c, a, b in terms))


def _pack(terms):
    merged: dict[tuple[int, int], float] = defaultdict(float)
    for c, a, b in terms:
        merged[(min(a, b), max(a, b))] += c
    items = [(c, a, b) for (a, b), c in merged.items() if c != 0]
    if not items:
        return np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    coef, a, b = zip(*items)
    return np.array(coef, dtype=np.float64), np.array(a), np.array(b)


def _in_per_group(mod: nn.modules.conv._ConvNd, forms: _Forms, name: str) -> Form:
    if is_depthwise(mod):
        return [(0, 1.0)]
    return _scale(forms.module(name, "in"), 1.0 / mod.groups)


def _compute_terms(model: nn.Module, trace: Trace, forms: _Forms):
    terms: list[tuple[float, int, int]] = []
    for call in trace.calls:
        if call.kind not in ("conv", "linear"):
            continue
        mod = model.get_submodule(call.module)
        out = forms.module(call.module, "out")
        if call.kind == "conv":
            spatial = call.numel / mod.out_channels
            k = math.prod(mod.kernel_size) * spatial
            terms += _times(_in_per_group(mod, forms, call.module), out, k)
        else:
            rows = call.numel / mod.out_features
            terms += _times(forms.module(call.module, "in"), out, rows)
    return terms


def _extra_terms(trace: Trace, forms: _Forms):
    terms: list[tuple[float, int, int]] = []
    for call in trace.calls:
        if call.kind not in ("norm", "act"):
            continue
        form, full = forms.call(call)
        terms += _linear(form, call.numel / full)
    return terms


def _param_terms(model: nn.Module, groups: Sequence[ChannelGroup], forms: _Forms):
    bare = {p.name: p.dim for g in groups for p in g.params}
    terms: list[tuple[float, int, int]] = []
    for name, p in model.named_parameters():
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        if name in bare:
            dim = bare[name] % p.dim()
            terms += _linear(forms.param(name, p, dim), p.numel() / p.shape[dim])
        elif isinstance(owner, nn.modules.conv._ConvNd) and attr in ("weight", "bias") \
                and not owner.transposed:
            out = forms.module(owner_name, "out")
            if attr == "bias":
                terms += _linear(out, 1.0)
            else:
                k = math.prod(owner.kernel_size)
                terms += _times(_in_per_group(owner, forms, owner_name), out, k)
        elif isinstance(owner, nn.Linear) and attr in ("weight", "bias"):
            out = forms.module(owner_name, "out")
            terms += (_linear(out, 1.0) if attr == "bias"
                      else _times(forms.module(owner_name, "in"), out, 1.0))
        elif _full_dim(owner, "out") is not None and p.dim() == 1 \
                and p.numel() == _full_dim(owner, "out"):
            terms += _linear(forms.module(owner_name, "out"), 1.0)
        else:
            terms.append((float(p.numel()), 0, 0))
    return terms
