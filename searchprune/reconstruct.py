"""Layer-wise least-squares reconstruction of a pruned network (paper Sec. 4.2,
docs/algorithms.md §3).

For every conv followed by BN, in forward order, fit ``min ||T - (X z + c)||^2`` where ``z`` is
the pruned net's BN output (pre-activation) and ``T`` the original's on the kept channels, then
merge ``X`` and ``c`` into the conv and BN so the pruned net gets no extra parameters or compute.

A conv without a BN right after it (SqueezeNet, AlexNet, VGG without BN) is fitted the same
way on its own output (pre-activation), ``z`` the pruned conv's output on its kept channels
and ``T`` the original's, and folded into the conv: ``W' = X W`` over output channels,
``b' = X b + c``; a conv without a bias is fitted without the intercept (``c = 0``), so no
parameter is ever added. Depthwise convs get a scale per channel, grouped convs ``X`` per
conv-group, as with a BN. A conv whose output is added to a residual shortcut is fitted to its
own output, not to the sum; a conv whose output reaches the model's output through no other
conv or linear (a final conv classifier, SqueezeNet's) is the output layer and left as it is,
as are convs called more than once per forward pass and convs the fold would not be exact for
(a forward that transforms the weight, e.g. a weight standardization: checked on a copy).

Greedy with error feedback in one forward pass: a hook on each BN (or conv without BN) of the
pruned net fits, merges, and returns the corrected output, so every later layer is fitted on
features that already carry the earlier corrections. The original network's targets are
captured once per study at a fixed, seeded subset of spatial positions.

Residual blocks: the last BN's target is the original pre-activation sum minus the pruned
shortcut (identity and index-map shortcuts); with a 1x1-conv+BN projection shortcut, ``[X_b, X_r]``
are fitted jointly on the stacked branch and shortcut features, the intercept going to the branch.

Linear layers the search narrows (an MLP's linears, channels first or last) are re-solved
from their kept inputs: ``min ||T - (W' x + b')||^2`` with ``T`` the original layer's
output, when the calibration set gives more samples (images x positions) than kept inputs; the
model's output layer is left as it is. :func:`plan` says, for every layer the search narrows,
whether and how it is fitted, or why not (``searchprune model info`` shows it);
:meth:`Reconstructor.outcome` counts what one rebuild did (a trial records it).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from searchprune.config import ReconstructionConfig
from searchprune.models._layers import IndexShortcut
from searchprune.prune import module_keep
from searchprune.space import SearchSpace, is_depthwise

__all__ = ["LayerPlan", "Reconstructor", "find_conv_sites", "find_linear_sites",
           "find_residual_blocks", "find_sites", "merge_affine", "merge_conv", "plan"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Site:
    """A conv followed directly by a BN, or a conv without BN (``bn`` None: the fit is folded
    into the conv's weights and bias): where a fit happens."""

    conv: str
    bn: str | None
    depthwise: bool
    groups: int = 1  # a grouped conv (not depthwise) is fitted per conv-group
    summed: bool = False  # a conv without BN whose output is added to another tensor

    @property
    def key(self) -> str:
        """The site's name in targets and errors: its BN, or the conv without one."""
        return self.bn if self.bn is not None else self.conv


@dataclass(frozen=True)
class Block:
    """A residual block whose last BN output is added to a shortcut."""

    name: str
    last_bn: str
    kind: str  # identity | map | projection
    shortcut: str | None = None  # module computing the shortcut from the block input
    shortcut_conv: str | None = None
    shortcut_bn: str | None = None


@dataclass
class _Trace:
    """What one traced forward pass tells about the convs: the conv -> BN pairs, every
    Conv2d called as a module (execution order, calls), the convs whose output reaches the
    model's output through no other conv or linear, and those whose output is added to
    another tensor (a residual sum)."""

    bn_sites: list[Site]
    order: list[str]
    calls: dict[str, int]
    shapes: dict[str, tuple[int, ...]]  # each Conv2d's input shape (one image)
    last: set[str]
    summed: set[str]


def _tensors(result) -> list[torch.Tensor]:
    """The tensors in a forward pass's result (a tensor, or tuples, lists and dicts of them)."""
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, Mapping):
        return [t for v in result.values() for t in _tensors(v)]
    if isinstance(result, (tuple, list)):
        return [t for v in result for t in _tensors(v)]
    return []


def _trace(model: nn.Module, example: torch.Tensor) -> _Trace:
    """One forward pass of one image with autograd on; the graph says which conv feeds a BN,
    which layers are last before the output and which conv outputs are summed."""
    names = {m: n for n, m in model.named_modules()}
    produced: dict[object, str] = {}  # a Conv2d's output node -> the conv
    layer_out: dict[object, str] = {}  # any conv's or linear's output node
    sites: list[Site] = []
    order: list[str] = []
    calls: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...]] = {}

    def conv_hook(mod, inp, out):
        name = names[mod]
        if isinstance(mod, nn.Conv2d):
            calls[name] = calls.get(name, 0) + 1
            if calls[name] == 1:
                order.append(name)
                shapes[name] = tuple(inp[0].shape)
        if getattr(out, "grad_fn", None) is None:  # under no_grad inside the model: no graph
            return
        if isinstance(mod, nn.Conv2d):
            produced[out.grad_fn] = name
        layer_out[out.grad_fn] = name

    def bn_pre(mod, inp):
        conv = produced.get(inp[0].grad_fn)
        if conv is not None and names[mod] not in {s.bn for s in sites}:
            c = model.get_submodule(conv)
            sites.append(Site(conv, names[mod], is_depthwise(c), 1 if is_depthwise(c) else c.groups))

    handles = []
    for mod in names:
        if isinstance(mod, (nn.modules.conv._ConvNd, nn.Linear)):
            handles.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, nn.BatchNorm2d):
            handles.append(mod.register_forward_pre_hook(bn_pre))
    try:
        with torch.enable_grad():
            result = model(example[:1].detach().clone().requires_grad_(True))
            roots = [t.grad_fn for t in _tensors(result) if t.grad_fn is not None]
            last, summed = set(), set()
            seen: set[object] = set()
            stack = list(roots)
            while stack:  # from the output back to the first conv or linear on each path
                fn = stack.pop()
                if fn is None or fn in seen:
                    continue
                seen.add(fn)
                if fn in layer_out:
                    last.add(layer_out[fn])
                    continue
                stack.extend(f for f, _ in fn.next_functions)
            seen, stack = set(), list(roots)
            while stack:  # the whole graph: which conv outputs an addition reads
                fn = stack.pop()
                if fn is None or fn in seen:
                    continue
                seen.add(fn)
                nxt = [f for f, _ in fn.next_functions]
                if type(fn).__name__.startswith(("AddBackward", "SubBackward")):
                    summed.update(produced[f] for f in nxt if f in produced)
                stack.extend(nxt)
    finally:
        for h in handles:
            h.remove()
    return _Trace(sites, order, calls, shapes, last, summed)


def find_sites(model: nn.Module, example: torch.Tensor) -> list[Site]:
    """All conv -> BN pairs, in execution order (one traced forward pass)."""
    return _trace(model, example).bn_sites


def find_conv_sites(model: nn.Module, example: torch.Tensor, trace: _Trace | None = None
                    ) -> tuple[list[Site], dict[str, str]]:
    """Conv2d layers not directly followed by a BN (fitted on their own output, folded into
    their weights and bias), in execution order, and the ones left out with the reason
    (called several times, never called as a module, the model's output layer, a forward
    that transforms its weight)."""
    trace = trace or _trace(model, example)
    with_bn = {s.conv for s in trace.bn_sites}
    sites, skipped = [], {}
    for name in trace.order:
        if name in with_bn:
            continue
        if trace.calls[name] > 1:
            skipped[name] = f"called {trace.calls[name]} times per forward pass"
        elif name in trace.last:
            skipped[name] = "the model's output layer (its targets would be the logits)"
        elif not _folds_exactly(model.get_submodule(name), trace.shapes[name]):
            skipped[name] = ("a fit does not fold into its weights exactly (its forward "
                             "transforms the weight, e.g. a weight standardization)")
        else:
            c = model.get_submodule(name)
            sites.append(Site(name, None, is_depthwise(c), 1 if is_depthwise(c) else c.groups,
                              name in trace.summed))
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d) and name not in trace.calls:
            skipped[name] = ("not called as a module (its parent computes with its weight)")
    return sites, skipped


def _folds_exactly(conv: nn.Conv2d, shape: tuple[int, ...]) -> bool:
    """Whether :func:`merge_conv` gives ``conv'(x) = X conv(x) + c`` for this conv: checked on a
    copy with a random ``X`` (block-diagonal for a grouped conv) on a small random input with
    the channels it was called with. False for a Conv2d subclass whose forward standardizes
    its weight, a parametrized weight, a weight recomputed by a hook."""
    w = conv.weight
    g = torch.Generator().manual_seed(0)
    n, groups = conv.out_channels, conv.groups
    dw = is_depthwise(conv)
    if dw:
        X = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
    else:
        X = torch.block_diag(*(torch.eye(n // groups, dtype=torch.float64)
                               + 0.3 * torch.randn(groups, n // groups, n // groups, generator=g,
                                                   dtype=torch.float64)))
    c = torch.randn(n, generator=g, dtype=torch.float64) if conv.bias is not None else None
    # a small map is enough (and cheap): at least the kernel's reach, at most the real size
    size = [min(full, max(8, d * (k - 1) + 1)) for full, k, d
            in zip(shape[-2:], conv.kernel_size, conv.dilation, strict=True)]
    x = torch.randn(1, shape[-3], *size, generator=g).to(device=w.device, dtype=w.dtype)
    try:
        probe = copy.deepcopy(conv)
        with torch.no_grad():
            y = conv(x).double()
            merge_conv(probe, X.to(w.device), None if c is None else c.to(w.device), diagonal=dw)
            got = probe(x).double()
    except Exception:  # noqa: BLE001 - any failure means: do not fold into it
        return False
    X, y = X.to(y.device), y.flatten(2)
    expected = (X[:, None] * y if dw else torch.einsum("ij,njp->nip", X, y))
    if c is not None:
        expected = expected + c.to(y.device).view(1, -1, 1)
    tol = 1e-3 if w.dtype in (torch.float32, torch.float64) else 2e-2
    err = (got.flatten(2) - expected).norm()
    return bool(torch.isfinite(err)) and float(err) <= tol * float(expected.norm()) + 1e-12


@dataclass(frozen=True)
class LayerPlan:
    """What least squares does to one layer the search narrows: ``fitted`` and ``how``, or
    not fitted and why (``how``)."""

    layer: str
    kind: str  # the module's type
    fitted: bool
    how: str


def find_linear_sites(model: nn.Module, space: SearchSpace, example: torch.Tensor
                      ) -> tuple[list[str], dict[str, str]]:
    """Linear layers whose channels the search narrows and that can be re-solved, in
    execution order, and the others with the reason (called several times, never called as a
    module, the model's output)."""
    names = {m: n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    calls: dict[str, int] = {}
    order: list[str] = []
    outputs: dict[str, torch.Tensor] = {}

    def hook(mod, inp, out):
        name = names[mod]
        calls[name] = calls.get(name, 0) + 1
        if name not in outputs:
            order.append(name)
        outputs[name] = out

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        with torch.no_grad():
            result = model(example[:1])
    finally:
        for h in handles:
            h.remove()
    skipped = {}
    narrowed = {name for mod, name in names.items()
                if _searched(space, mod, name, "in") or _searched(space, mod, name, "out")}
    for name in names.values():
        if name not in narrowed:
            continue
        if calls.get(name, 0) == 0:
            skipped[name] = ("not called as a module (its parent computes with its weight, as "
                             "MultiheadAttention does)")
        elif calls[name] > 1:
            skipped[name] = f"called {calls[name]} times per forward pass"
        elif outputs[name] is result:
            skipped[name] = "the model's output layer (its targets would be the logits)"
    return [n for n in order if n in narrowed and n not in skipped], skipped


def _searched(space: SearchSpace, mod: nn.Module, name: str, role: str) -> bool:
    """Whether the search can narrow the ``role`` channels of layer ``name``."""
    return any(g is not None and c for g, c in space.channel_form(mod, name, role).items())


def plan(model: nn.Module, space: SearchSpace, example: torch.Tensor) -> list[LayerPlan]:
    """For every conv and linear layer whose channels the search narrows (and every layer
    fitted anyway), in module order: whether least squares fits it and how, or why not. The
    same sites :class:`Reconstructor` fits."""
    sites, blocks, linear, skipped = _all_sites(model, space, example)
    out: dict[str, LayerPlan] = {}
    for s in sites:
        if s.bn is None:
            out[s.conv] = LayerPlan(s.conv, type(model.get_submodule(s.conv)).__name__, True,
                                    _plain_how(model.get_submodule(s.conv), s))
            continue
        block = blocks.get(s.bn)
        how = ("depthwise conv + BatchNorm: a scale per channel" if s.depthwise else
               f"grouped conv + BatchNorm: outputs remixed per conv-group ({s.groups})"
               if s.groups > 1 else "conv + BatchNorm: outputs remixed")
        if block is not None:
            how += f"; fitted to residual block {block.name}'s sum"
            if block.kind == "projection" and block.shortcut_conv is not None:
                out[block.shortcut_conv] = LayerPlan(
                    block.shortcut_conv, type(model.get_submodule(block.shortcut_conv)).__name__,
                    True, f"projection shortcut: fitted jointly with {s.conv}")
        out[s.conv] = LayerPlan(s.conv, type(model.get_submodule(s.conv)).__name__, True, how)
    for name in linear:
        out[name] = LayerPlan(name, type(model.get_submodule(name)).__name__, True,
                              "linear: weights re-solved on its kept inputs (when the "
                              "calibration images give more samples than kept inputs)")
    for name, mod in model.named_modules():
        if name in out or not isinstance(mod, (nn.modules.conv._ConvNd, nn.Linear)):
            continue
        if not (_searched(space, mod, name, "in") or _searched(space, mod, name, "out")):
            continue
        why = skipped.get(name)
        if why is None:
            why = ("no fit applies to it" if isinstance(mod, nn.Conv2d)
                   else "only Conv2d and Linear layers are fitted")
        out[name] = LayerPlan(name, type(mod).__name__, False, why)
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return sorted(out.values(), key=lambda p: order[p.layer])


def _plain_how(conv: nn.Conv2d, s: Site) -> str:
    """How a conv without BN is fitted, for :func:`plan`."""
    how = ("depthwise conv without BatchNorm: a scale per channel" if s.depthwise else
           f"grouped conv without BatchNorm: outputs remixed per conv-group ({s.groups})"
           if s.groups > 1 else "conv without BatchNorm: outputs remixed")
    how += (", folded into its weights and bias" if conv.bias is not None else
            ", folded into its weights (no bias: fitted without a shift)")
    if s.summed:
        how += "; fitted to its own output, not to the residual sum it feeds"
    return how


def _all_sites(model: nn.Module, space: SearchSpace, example: torch.Tensor
               ) -> tuple[list[Site], dict[str, Block], list[str], dict[str, str]]:
    """The conv sites, with BN (projection shortcuts' BNs excluded: fitted with their block)
    and without, the residual blocks by last BN, the linear sites, and the convs and linears
    left out with why."""
    trace = _trace(model, example)
    sites = trace.bn_sites
    fitted = {s.bn for s in sites}
    blocks = {b.last_bn: b for b in find_residual_blocks(model) if b.last_bn in fitted}
    skip = {b.shortcut_bn for b in blocks.values() if b.kind == "projection"}
    plain, skipped = find_conv_sites(model, example, trace)
    linear, skipped_linear = find_linear_sites(model, space, example)
    return ([s for s in sites if s.bn not in skip] + plain, blocks, linear,
            {**skipped, **skipped_linear})


def find_residual_blocks(model: nn.Module) -> list[Block]:
    """Residual blocks of the supported families (searchprune's CIFAR blocks, torchvision's
    BasicBlock/Bottleneck/InvertedResidual). Others are fitted as plain conv-BN layers."""
    blocks = []
    for name, mod in model.named_modules():
        prefix = f"{name}." if name else ""
        last_bn = getattr(mod, "last_bn", None)
        short_name = getattr(mod, "shortcut_name", None)
        if last_bn is None and type(mod).__name__ in ("BasicBlock", "Bottleneck") and hasattr(mod, "downsample"):
            last_bn = "bn3" if hasattr(mod, "bn3") else "bn2"
            short_name = "downsample"
        if last_bn is not None:
            short = getattr(mod, short_name, None) if short_name else None
            blocks.append(_block(prefix, name, last_bn, short_name, short))
        elif getattr(mod, "use_res_connect", False) and hasattr(mod, "conv"):
            idx = len(mod.conv) - 1
            if isinstance(mod.conv[idx], nn.BatchNorm2d):
                blocks.append(Block(name, f"{prefix}conv.{idx}", "identity"))
    return blocks


def _block(prefix, name, last_bn, short_name, short) -> Block:
    bn = prefix + last_bn
    if short is None or isinstance(short, nn.Identity):
        return Block(name, bn, "identity")
    if isinstance(short, IndexShortcut):
        return Block(name, bn, "map", prefix + short_name)
    if isinstance(short, nn.Sequential) and len(short) == 2:
        return Block(name, bn, "projection", prefix + short_name,
                     f"{prefix}{short_name}.0", f"{prefix}{short_name}.1")
    return Block(name, bn, "identity")


def merge_affine(conv: nn.Conv2d, bn: nn.BatchNorm2d, X: torch.Tensor, c: torch.Tensor | None,
                 *, diagonal: bool = False) -> None:
    """Fold ``z -> X z + c`` on BN outputs into the conv weights and BN shift (docs/algorithms.md §3).

    ``BN(W'x + b') = X BN(Wx + b) + c`` with ``W' = diag(1/s) X diag(s) W`` and
    ``beta' = X t + c + s*mu``, where ``s = gamma/sqrt(var+eps)`` and ``t = beta - s*mu``.
    With ``diagonal`` (depthwise convs) ``X`` is the vector of the diagonal. A channel whose BN
    scale is exactly 0 outputs its shift whatever the conv computes: its conv row is zeroed
    instead of divided by 0 (callers keep such rows of ``X`` identity).
    """
    dt = torch.float64
    s = (bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps))
    mu = bn.running_mean.double()
    t = bn.bias.double() - s * mu
    X = X.to(dt)
    c = torch.zeros_like(s) if c is None else c.to(dt)
    with torch.no_grad():
        W = conv.weight.double()
        if diagonal:
            conv.weight.copy_((X.view(-1, *([1] * (W.dim() - 1))) * W).to(conv.weight.dtype))
            if conv.bias is not None:
                conv.bias.copy_((X * conv.bias.double()).to(conv.bias.dtype))
            bn.bias.copy_((X * t + c + s * mu).to(bn.bias.dtype))
            return
        inv = torch.where(s != 0, 1.0 / torch.where(s != 0, s, 1.0), 0.0)
        M = X * s[None, :] * inv[:, None]
        conv.weight.copy_(torch.einsum("ij,j...->i...", M, W).to(conv.weight.dtype))
        if conv.bias is not None:
            conv.bias.copy_((M @ conv.bias.double()).to(conv.bias.dtype))
        bn.bias.copy_((X @ t + c + s * mu).to(bn.bias.dtype))


def merge_conv(conv: nn.Conv2d, X: torch.Tensor, c: torch.Tensor | None, *,
               diagonal: bool = False) -> None:
    """Fold ``z -> X z + c`` on a conv's outputs into its weights and bias: ``W' = X W`` (over
    output channels), ``b' = X b + c``, so that ``conv'(x) = X conv(x) + c``. With
    ``diagonal`` (depthwise convs) ``X`` is the vector of the diagonal. A conv without a bias
    takes no ``c`` (it would need a parameter the pruned network does not have)."""
    if conv.bias is None and c is not None and bool((c != 0).any()):
        raise ValueError(f"a shift cannot be folded into a conv without a bias ({conv})")
    dt = torch.float64
    X = X.to(dt)
    with torch.no_grad():
        W = conv.weight.double()
        if diagonal:
            conv.weight.copy_((X.view(-1, *([1] * (W.dim() - 1))) * W).to(conv.weight.dtype))
            b = X * conv.bias.double() if conv.bias is not None else None
        else:
            conv.weight.copy_(torch.einsum("ij,j...->i...", X, W).to(conv.weight.dtype))
            b = X @ conv.bias.double() if conv.bias is not None else None
        if b is not None:
            conv.bias.copy_((b if c is None else b + c.to(dt)).to(conv.bias.dtype))


def _bn_scale(bn: nn.BatchNorm2d) -> torch.Tensor:
    return bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)


class Reconstructor:
    """Captures the original net's targets once; rebuilds any pruned copy of it in one pass."""

    def __init__(self, model: nn.Module, space: SearchSpace, calib_x: torch.Tensor,
                 rcfg: ReconstructionConfig, *, device: torch.device | None = None,
                 seed: int = 0, batch_size: int = 256) -> None:
        self.rcfg = rcfg
        self.space = space
        self.device = device or torch.device("cpu")
        self.calib_x = calib_x.to(self.device)
        self.seed = seed
        self.batch_size = batch_size
        self.sites, self.blocks, self.linear_sites, _ = _all_sites(model, space,
                                                                   self.calib_x[:1])
        self.n_not_fitted = sum(not p.fitted for p in plan(model, space, self.calib_x[:1]))
        self._positions: dict[object, torch.Tensor] = {}
        n = self.calib_x.shape[0]
        self.n_fit = n - int(round(n * rcfg.holdout_fraction)) if n > 1 else n
        self.targets = self._capture(model)

    # -- positions -------------------------------------------------------------------------------
    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (C, N*P)`` at the fixed positions for this spatial size."""
        hw = t.shape[2] * t.shape[3]
        pos = self._positions.get(hw)
        if pos is None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + hw)
            p = min(self.rcfg.positions_per_image, hw)
            pos = torch.randperm(hw, generator=g)[:p].sort().values.to(t.device)
            self._positions[hw] = pos
        return t.flatten(2)[:, :, pos].permute(1, 0, 2).reshape(t.shape[1], -1)

    def _gather_last(self, t: torch.Tensor) -> torch.Tensor:
        """A linear layer's ``(N, ..., C) -> (C, N*P)`` at fixed positions among its tokens."""
        flat = t.reshape(t.shape[0], -1, t.shape[-1])
        n = flat.shape[1]
        pos = self._positions.get(("tokens", n))
        if pos is None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + n + 7)
            p = min(self.rcfg.positions_per_image, n)
            pos = torch.randperm(n, generator=g)[:p].sort().values.to(t.device)
            self._positions[("tokens", n)] = pos
        return flat[:, pos, :].permute(2, 0, 1).reshape(t.shape[-1], -1)

    # -- once per study ----------------------------------------------------------------------
    def _capture(self, model: nn.Module) -> dict[str, torch.Tensor]:
        store: dict[str, list[torch.Tensor]] = {}
        handles = []

        def saver(key):
            def hook(mod, inp, out):
                store.setdefault(key, []).append(self._gather(out).float())
            return hook

        def pre_saver(key):
            def hook(mod, inp):
                store.setdefault(key, []).append(self._gather(inp[0]).float())
            return hook

        def linear_saver(key):
            def hook(mod, inp, out):
                store.setdefault(key, []).append(self._gather_last(out).float())
            return hook

        for s in self.sites:
            handles.append(model.get_submodule(s.key).register_forward_hook(saver(s.key)))
        for name in self.linear_sites:
            handles.append(model.get_submodule(name).register_forward_hook(linear_saver(name)))
        for b in self.blocks.values():
            key = "shortcut:" + b.last_bn
            if b.kind == "identity":
                handles.append(model.get_submodule(b.name).register_forward_pre_hook(pre_saver(key)))
            else:
                handles.append(model.get_submodule(b.shortcut).register_forward_hook(saver(key)))
        try:
            with torch.no_grad():
                for i in range(0, self.calib_x.shape[0], self.batch_size):
                    model(self.calib_x[i:i + self.batch_size])
        finally:
            for h in handles:
                h.remove()
        targets = {k: torch.cat(v, dim=1) for k, v in store.items()}
        for b in self.blocks.values():  # the block's pre-activation sum
            targets[b.last_bn] = targets[b.last_bn] + targets.pop("shortcut:" + b.last_bn)
        return targets

    # -- per trial ----------------------------------------------------------------------------
    def rebuild(self, pruned: nn.Module, keep: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Fit and merge every site of ``pruned``, in place. ``pruned`` is
        ``prune_model(model, space, keep)``: ``keep`` (kept channel indices per group, as given
        to :func:`prune_model`) says which original output channels each layer still has.

        Returns the relative holdout error (fitted / unfitted) per site (conv sites by their
        BN, convs without BN and linear sites by name); a linear site with too few samples is
        left out.
        """
        per_module = module_keep(self.space, keep)
        shortcut_out: dict[str, torch.Tensor] = {}
        errors: dict[str, float] = {}
        handles = []

        def block_pre(b: Block):
            short = None if b.kind == "identity" else pruned.get_submodule(b.shortcut)

            def hook(mod, inp):
                shortcut_out[b.last_bn] = inp[0] if short is None else short(inp[0])
            return hook

        def site_hook(s: Site):
            def hook(mod, inp, out):
                kept = per_module.get(s.key)
                sel = kept.out if kept is not None and kept.out is not None else None
                target = self.targets[s.key]
                target = target if sel is None else target[sel.to(target.device)]
                if s.bn is None:
                    return self._fit_conv(mod, s, out, target, errors)
                return self._fit_site(pruned, s, out, target, shortcut_out.pop(s.bn, None), errors)
            return hook

        def linear_hook(name: str):
            def hook(mod, inp, out):
                kept = per_module.get(name)
                target = self.targets[name]
                if kept is not None and kept.out is not None:
                    target = target[kept.out.to(target.device)]
                return self._fit_linear(mod, name, inp[0], out, target, errors)
            return hook

        for b in self.blocks.values():
            handles.append(pruned.get_submodule(b.name).register_forward_pre_hook(block_pre(b)))
        for s in self.sites:
            handles.append(pruned.get_submodule(s.key).register_forward_hook(site_hook(s)))
        for name in self.linear_sites:
            handles.append(pruned.get_submodule(name).register_forward_hook(linear_hook(name)))
        pruned.eval()
        try:
            with torch.no_grad():
                pruned(self.calib_x)
        finally:
            for h in handles:
                h.remove()
        return errors

    def outcome(self, errors: Mapping[str, float]) -> dict[str, int]:
        """What one :meth:`rebuild` did (its ``errors``): layers ``fitted``, ``kept`` as they
        were (the fit did no better on held-out images), ``skipped`` (a linear layer with
        fewer samples than kept inputs) and ``not_fitted`` (no fit applies, see :func:`plan`)."""
        worse = sum(1 for e in errors.values() if e >= 1.0) if self.rcfg.guard else 0
        return {"fitted": len(errors) - worse, "kept": worse,
                "skipped": sum(1 for n in self.linear_sites if n not in errors),
                "not_fitted": self.n_not_fitted}

    def _fit_linear(self, mod: nn.Linear, name: str, x: torch.Tensor, out: torch.Tensor,
                    target: torch.Tensor, errors: dict[str, float]) -> torch.Tensor:
        """Re-solve ``mod`` on its kept inputs ``x`` (input-side least squares), merge, and
        return its corrected output; unchanged with too few samples or a worse fit."""
        z = self._gather_last(x)
        cols = self.n_fit * (z.shape[1] // self.calib_x.shape[0])
        rcfg = self.rcfg if mod.bias is not None else dataclasses.replace(self.rcfg,
                                                                          intercept=False)
        if cols <= z.shape[0] + int(rcfg.intercept):
            return out
        X, c, rel = _solve(z, target, cols, rcfg, base=self._gather_last(out))
        errors[name] = rel
        if rel >= 1.0 and self.rcfg.guard:
            return out
        with torch.no_grad():
            mod.weight.copy_(X.to(mod.weight.dtype))
            if mod.bias is not None:
                mod.bias.copy_(c.to(mod.bias.dtype))
        return F.linear(x, mod.weight, mod.bias)

    def _fit_conv(self, conv: nn.Conv2d, s: Site, out: torch.Tensor, target: torch.Tensor,
                  errors: dict[str, float]) -> torch.Tensor:
        """Fit ``X z + c`` on the outputs of a conv without BN, fold it into the conv's
        weights and bias, and return the corrected output; without a bias, no intercept (a
        bias would add parameters). No division is involved, so no channel needs an identity
        row: a constant or all-zero output channel is resolved by the ridge (or the
        pseudo-inverse) like any other."""
        rcfg = self.rcfg if conv.bias is not None else dataclasses.replace(self.rcfg,
                                                                           intercept=False)
        z = self._gather(out)
        cols = self.n_fit * (z.shape[1] // self.calib_x.shape[0])
        if s.depthwise:
            X, c, rel = _solve_diag(z.double(), target.double(), cols, rcfg)
        elif s.groups > 1:
            X, c, rel = _solve_blocks(z, target, cols, rcfg, s.groups)
        else:
            X, c, rel = _solve(z, target, cols, rcfg, base=z)
        errors[s.conv] = rel
        if rel >= 1.0 and self.rcfg.guard:
            return out
        merge_conv(conv, X, c if conv.bias is not None else None, diagonal=s.depthwise)
        if s.depthwise:
            return out * X.to(out.dtype).view(1, -1, 1, 1) + c.to(out.dtype).view(1, -1, 1, 1)
        return _apply(out, X, c)

    def _fit_site(self, pruned, s: Site, out, target, shortcut, errors):
        block = self.blocks.get(s.bn)
        z = self._gather(out)
        T = target
        cols = self.n_fit * (z.shape[1] // self.calib_x.shape[0])
        conv, bn = pruned.get_submodule(s.conv), pruned.get_submodule(s.bn)
        dead = _bn_scale(bn).abs() < 1e-6
        n = z.shape[0]
        if block is not None and block.kind == "projection":
            r = self._gather(shortcut)
            X, c, rel = _solve(torch.cat([z, r]), T, cols, self.rcfg, base=z + r)
            errors[s.bn] = rel
            if rel >= 1.0 and self.rcfg.guard:
                return out
            short_conv = pruned.get_submodule(block.shortcut_conv)
            short_bn = pruned.get_submodule(block.shortcut_bn)
            # A dead channel on either side cannot take a fitted row: that output channel keeps
            # the original sum (identity rows in both maps), never a half-fitted mix.
            dead = dead | (_bn_scale(short_bn).abs() < 1e-6)
            Xb, Xr = _keep_dead(X[:, :n], dead), _keep_dead(X[:, n:], dead)
            c[dead] = 0
            merge_affine(conv, bn, Xb, c)
            merge_affine(short_conv, short_bn, Xr, None)
            return _apply(out, Xb, c)
        if block is not None:  # identity or index-map shortcut: fit the branch to sum - shortcut
            T = T - self._gather(shortcut)
        if s.depthwise:
            alpha, c, rel = _solve_diag(z.double(), T.double(), cols, self.rcfg)
            errors[s.bn] = rel
            if rel >= 1.0 and self.rcfg.guard:
                return out
            alpha[dead], c[dead] = 1, 0
            merge_affine(conv, bn, alpha, c, diagonal=True)
            return out * alpha.to(out.dtype).view(1, -1, 1, 1) + c.to(out.dtype).view(1, -1, 1, 1)
        if s.groups > 1:
            X, c, rel = _solve_blocks(z, T, cols, self.rcfg, s.groups)
        else:
            X, c, rel = _solve(z, T, cols, self.rcfg, base=z)
        errors[s.bn] = rel
        if rel >= 1.0 and self.rcfg.guard:
            return out
        X = _keep_dead(X, dead)
        c[dead] = 0
        merge_affine(conv, bn, X, c)
        return _apply(out, X, c)


def _keep_dead(X: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    """Rows of dead channels (BN scale ~ 0) stay identity: their merge would divide by ~0."""
    if dead.any():
        X = X.clone()
        X[dead] = 0
        X[dead, dead.nonzero().flatten()] = 1
    return X


def _apply(out: torch.Tensor, X: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``X z + c`` over whole feature maps: a batched matrix product over the channel axis
    (several times faster on a CPU than the equivalent 1x1 convolution)."""
    n, ch = out.shape[:2]
    y = X.to(out.dtype) @ out.reshape(n, ch, -1)
    return y.add_(c.to(out.dtype).view(1, -1, 1)).view(n, X.shape[0], *out.shape[2:])


_CHUNK = 1 << 16


def _gram(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``A @ B.T`` in float32 chunks of 65k columns, accumulated in float64."""
    if A.shape[1] <= _CHUNK:
        return (A @ B.T).double()
    acc = torch.zeros(A.shape[0], B.shape[0], dtype=torch.float64, device=A.device)
    for i in range(0, A.shape[1], _CHUNK):
        acc += (A[:, i:i + _CHUNK] @ B[:, i:i + _CHUNK].T).double()
    return acc


def _row_sums(A: torch.Tensor) -> torch.Tensor:
    """Row sums of a float32 matrix, accumulated in float64 across chunks of columns (a
    matrix-vector product per chunk: several times faster than ``sum(1)`` on a column slice)."""
    acc = torch.zeros(A.shape[0], dtype=torch.float64, device=A.device)
    ones = torch.ones(min(A.shape[1], _CHUNK), dtype=A.dtype, device=A.device)
    for i in range(0, A.shape[1], _CHUNK):
        block = A[:, i:i + _CHUNK]
        acc += (block @ ones[:block.shape[1]]).double()
    return acc


def _solve(Z: torch.Tensor, T: torch.Tensor, cols: int, rcfg: ReconstructionConfig, *,
           base: torch.Tensor):
    """Ridge least squares ``T ~ X Z + c`` on the first ``cols`` columns (float64 normal
    equations); relative holdout error against ``base`` (the layer's output without the fit)."""
    k, n = Z.shape[0], T.shape[0]
    Zf, Tf = Z[:, :cols], T[:, :cols]
    G = torch.empty(k + 1, k + 1, dtype=torch.float64, device=Z.device)
    G[:k, :k] = _gram(Zf, Zf)
    G[:k, k] = G[k, :k] = _row_sums(Zf)
    G[k, k] = cols
    C = torch.empty(n, k + 1, dtype=torch.float64, device=Z.device)
    C[:, :k] = _gram(Tf, Zf)
    C[:, k] = _row_sums(Tf)
    if not (torch.isfinite(G).all() and torch.isfinite(C).all()):
        raise FloatingPointError("NaN/inf in feature maps during least-squares reconstruction")
    if not rcfg.intercept:
        G, C = G[:k, :k], C[:, :k]
    lam = rcfg.ridge * torch.trace(G[:k, :k]) / k
    G[:k, :k] += lam * torch.eye(k, dtype=G.dtype, device=G.device)
    try:
        sol = torch.linalg.solve(G, C.T).T
    except RuntimeError:
        sol = None
    if sol is None or not torch.isfinite(sol).all():  # singular (e.g. all-zero features)
        sol = (torch.linalg.pinv(G) @ C.T).T
    X = sol[:, :k].clone()
    c = sol[:, k].clone() if rcfg.intercept else torch.zeros(n, dtype=torch.float64,
                                                             device=Z.device)
    Zh, Th, Bh = (Z[:, cols:], T[:, cols:], base[:, cols:]) if cols < Z.shape[1] else (Z, T, base)
    fitted = ((Th - X.float() @ Zh - c.float()[:, None]) ** 2).sum()
    ident = ((Th - Bh) ** 2).sum()
    rel = float(fitted / ident) if ident > 0 else (0.0 if fitted == 0 else float("inf"))
    return X, c, rel


def _solve_blocks(z: torch.Tensor, T: torch.Tensor, cols: int, rcfg: ReconstructionConfig,
                  groups: int):
    """Least squares per conv-group of a grouped conv: ``X`` is block-diagonal, so merging it
    into the conv mixes only filters that read the same input channels."""
    n = z.shape[0]
    per = n // groups
    X = torch.zeros(n, n, dtype=torch.float64, device=z.device)
    c = torch.zeros(n, dtype=torch.float64, device=z.device)
    for b in range(groups):
        rows = slice(b * per, (b + 1) * per)
        X[rows, rows], c[rows], _ = _solve(z[rows], T[rows], cols, rcfg, base=z[rows])
    zh, th = (z[:, cols:], T[:, cols:]) if cols < z.shape[1] else (z, T)
    fitted = ((th - X.float() @ zh - c.float()[:, None]) ** 2).sum()
    ident = ((th - zh) ** 2).sum()
    rel = float(fitted / ident) if ident > 0 else (0.0 if fitted == 0 else float("inf"))
    return X, c, rel


def _solve_diag(z: torch.Tensor, T: torch.Tensor, cols: int, rcfg: ReconstructionConfig):
    """Per-channel 1-D regression (depthwise convs: X must be diagonal)."""
    if not (torch.isfinite(z).all() and torch.isfinite(T).all()):
        raise FloatingPointError("NaN/inf in feature maps during least-squares reconstruction")
    zf, tf = z[:, :cols], T[:, :cols]
    zm, tm = zf.mean(1), tf.mean(1)
    if not rcfg.intercept:
        zm = tm = torch.zeros_like(zm)
    zc, tc = zf - zm[:, None], tf - tm[:, None]
    var = (zc ** 2).mean(1)
    lam = rcfg.ridge * var.mean()
    alpha = (zc * tc).mean(1) / (var + lam).clamp_min(1e-30)
    c = tm - alpha * zm
    zh, th = (z[:, cols:], T[:, cols:]) if cols < z.shape[1] else (z, T)
    fitted = ((th - alpha[:, None] * zh - c[:, None]) ** 2).sum()
    ident = ((th - zh) ** 2).sum()
    rel = float(fitted / ident) if ident > 0 else 0.0
    return alpha, c, rel
