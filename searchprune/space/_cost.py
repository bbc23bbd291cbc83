"""FLOPs and parameter counts, the paper's convention (docs/algorithms.md §4).

FLOPs = conv/linear multiply-accumulates + one per BN output element + one per activation output
element; params = all trainable parameters (weights, biases, BN affine), no buffers.

:func:`count_cost` measures a concrete network by forward hooks. :class:`CostModel` is built once
from one such pass and then computes the cost of any width configuration analytically, as a sum
of ``coef * v[a] * v[b]`` terms over the width vector ``v = [1, w_1, ..., w_G]``: a few
microseconds, cheap enough to gate every candidate.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from searchprune.space._groups import ChannelGroup, is_depthwise

__all__ = ["Cost", "CostModel", "count_cost", "forward_hooks"]

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.SiLU, nn.Hardswish, nn.GELU, nn.Sigmoid,
                nn.Hardsigmoid, nn.LeakyReLU, nn.PReLU, nn.Mish, nn.Tanh, nn.ELU)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


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


def count_cost(model: nn.Module, example: torch.Tensor) -> Cost:
    """Count FLOPs/MACs of one forward pass (per image) and the trainable parameters."""
    macs = extra = 0.0
    batch = example.shape[0]

    def hook(mod, inputs, out):
        nonlocal macs, extra
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1]
            macs += k * (mod.in_channels // mod.groups) * out.numel() / batch
        elif isinstance(mod, nn.Linear):
            macs += mod.in_features * out.numel() / batch
        elif isinstance(mod, _NORMS + _ACTIVATIONS):
            extra += out.numel() / batch

    with forward_hooks((m for _, m in _leaves(model)), hook), torch.no_grad():
        model(example)
    params = sum(p.numel() for p in model.parameters())
    return Cost(int(round(macs + extra)), int(round(macs)), int(params))


class CostModel:
    """Analytic cost of a width configuration, from a one-time profile of the unpruned network."""

    def __init__(self, model: nn.Module, example: torch.Tensor,
                 groups: Sequence[ChannelGroup]) -> None:
        self.groups = list(groups)
        self._index = {g.name: i + 1 for i, g in enumerate(self.groups)}
        self._full = np.array([1.0] + [float(g.channels) for g in self.groups])
        out_of, in_of = {}, {}
        for gi, g in enumerate(self.groups, start=1):
            for m in g.members:
                (out_of if m.role == "out" else in_of)[m.module] = gi
        flops, macs, params = _profile(model, example[:1], out_of, in_of, self._full)
        self._terms = {k: _pack(v) for k, v in
                       (("flops", flops), ("macs", macs), ("params", params))}

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


def _pack(terms):
    if not terms:
        return np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    coef, a, b = zip(*terms)
    return np.array(coef, dtype=np.float64), np.array(a), np.array(b)


def _profile(model, example, out_of, in_of, full):
    """One forward pass with grad enabled; autograd links tell which group each tensor's channels
    belong to (needed for activations and other modules that are not group members)."""
    flops: list[tuple[float, int, int]] = []
    macs: list[tuple[float, int, int]] = []
    source: dict[object, int] = {}  # grad_fn of a module output -> group index (0 = constant)
    pending: dict[int, int] = {}

    def group_of(t: torch.Tensor) -> int:
        seen, queue = set(), [t.grad_fn]
        while queue:
            fn = queue.pop(0)
            if fn is None or fn in seen:
                continue
            if fn in source:
                return source[fn]
            seen.add(fn)
            queue.extend(nxt for nxt, _ in fn.next_functions)
        return 0

    def pre_hook(mod, inputs):
        pending[id(mod)] = group_of(inputs[0]) if isinstance(inputs[0], torch.Tensor) else 0

    def hook(mod, inputs, out):
        name = names[mod]
        numel = out[0].numel() if out.dim() > 1 else out.numel()
        from_input = pending.pop(id(mod), 0)
        gi_in = in_of.get(name, from_input)
        gi_out = out_of.get(name)
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * numel / mod.out_channels
            if is_depthwise(mod) and gi_out is not None and gi_in == gi_out:
                macs.append((k * mod.out_channels / full[gi_out], gi_out, 0))
            else:
                per = k * (mod.in_channels // mod.groups) * mod.out_channels
                _bilinear(macs, per, gi_in, gi_out, full)
        elif isinstance(mod, nn.Linear):
            per = mod.in_features * numel
            _bilinear(macs, per, gi_in, gi_out, full)
        elif isinstance(mod, _NORMS + _ACTIVATIONS):
            g = gi_out if gi_out is not None else gi_in
            flops.append((numel / full[g], g, 0) if g else (numel, 0, 0))
        if gi_out is None:
            gi_out = gi_in
        if out.grad_fn is not None:
            source[out.grad_fn] = gi_out

    names = {m: n for n, m in _leaves(model)}
    handles = []
    for mod in names:
        handles.append(mod.register_forward_pre_hook(pre_hook))
        handles.append(mod.register_forward_hook(hook))
    x = example.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    params = _param_terms(model, names, out_of, in_of, full)
    return flops + macs, macs, params


def _bilinear(terms, total, gi_in, gi_out, full):
    """``total`` is the full-width value; it scales with the in- and out-width independently."""
    coef = total
    a = b = 0
    if gi_in:
        coef /= full[gi_in]
        a = gi_in
    if gi_out:
        coef /= full[gi_out]
        b = gi_out
    terms.append((coef, a, b))


def _param_terms(model, names, out_of, in_of, full):
    terms: list[tuple[float, int, int]] = []
    for mod, name in names.items():
        gi_out, gi_in = out_of.get(name, 0), in_of.get(name, 0)
        own = list(mod.parameters(recurse=False))
        if not own:
            continue
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            w = mod.weight
            if is_depthwise(mod) and gi_out and (gi_in in (0, gi_out)):
                terms.append((w.numel() / full[gi_out], gi_out, 0))
            else:
                _bilinear(terms, w.numel(), gi_in, gi_out, full)
            if mod.bias is not None:
                _bilinear(terms, mod.bias.numel(), 0, gi_out, full)
        else:
            for p in own:
                g = gi_out or gi_in
                terms.append((p.numel() / full[g], g, 0) if g else (float(p.numel()), 0, 0))
    return terms
