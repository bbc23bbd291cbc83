"""One traced forward pass: Torch-Pruning's dependency graph, every leaf-module call, and the
shape of every tensor an operation produced, under a time and memory bound.

The graph, the calls and the shapes come from the same forward pass, so the autograd nodes
Torch-Pruning keeps in its graph are the very ``grad_fn`` objects the hooks saw: an activation
call is found in a channel group by its output's ``grad_fn``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch.overrides import TorchFunctionMode

from searchprune.errors import ModelError
from searchprune.models._layers import IndexShortcut

__all__ = ["Call", "IndexShortcutPruner", "Trace", "discovery_budget", "trace_model"]

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.SiLU, nn.Hardswish, nn.GELU, nn.Sigmoid,
                nn.Hardsigmoid, nn.LeakyReLU, nn.PReLU, nn.Mish, nn.Tanh, nn.ELU)
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm,
          nn.modules.instancenorm._InstanceNorm)

DEFAULT_SECONDS = 120.0
DEFAULT_MEMORY_GB = 4.0


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


def call_kind(module: nn.Module) -> str:
    """How the cost model counts a leaf module's call."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, _NORMS):
        return "norm"
    if isinstance(module, _ACTIVATIONS):
        return "act"
    return "other"


@dataclass(frozen=True)
class Call:
    """One call of a leaf module in the traced forward pass (one image)."""

    key: str  # the module name; "name#k" for its k-th call after the first
    module: str
    kind: str  # conv | linear | norm | act | other
    numel: int  # output elements
    shape: tuple[int, ...]  # output shape


@dataclass
class Trace:
    """Everything the channel groups and the cost model are derived from."""

    graph: Any  # tp.DependencyGraph
    calls: list[Call]
    call_of: dict[Any, int]  # output grad_fn -> index into calls
    shapes: dict[Any, tuple[tuple[int, ...] | None, tuple[int, ...]]]  # grad_fn -> (in, out)
    counts: Counter = field(default_factory=Counter)  # module name -> calls per forward pass
    param_names: dict[Any, str] = field(default_factory=dict)  # bare nn.Parameter -> its name
    parts: dict[Any, list] = field(default_factory=dict)  # cat grad_fn -> [(shape, grad)]
    outs: dict[Any, list] = field(default_factory=dict)  # split grad_fn -> [output shape]


class _Shapes(TorchFunctionMode):
    """Records the input and output shape of every torch function call, by the output's grad_fn."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: dict[Any, tuple[tuple[int, ...] | None, tuple[int, ...]]] = {}
        self.parts: dict[Any, list[tuple[tuple[int, ...], bool]]] = {}
        self.outs: dict[Any, list[tuple[int, ...]]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        first = args[0] if args else None
        src = tuple(first.shape) if isinstance(first, torch.Tensor) else None
        outs = result if isinstance(result, (tuple, list)) else (result,)
        for out in outs:
            if isinstance(out, torch.Tensor) and out.grad_fn is not None:
                self.shapes.setdefault(out.grad_fn, (src, tuple(out.shape)))
        fn = getattr(outs[0], "grad_fn", None) if outs else None
        if fn is not None and isinstance(first, (tuple, list)) \
                and all(isinstance(t, torch.Tensor) for t in first):
            self.parts.setdefault(fn, [(tuple(t.shape), t.requires_grad) for t in first])
        if fn is not None and len(outs) > 1:
            self.outs.setdefault(fn, [tuple(o.shape) for o in outs
                                      if isinstance(o, torch.Tensor)])
        return result


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


@contextlib.contextmanager
def discovery_budget(seconds: float, memory_gb: float, what: str) -> Iterator[None]:
    """Raise a one-line :class:`ModelError` when the block runs longer than ``seconds`` or the
    process grows by more than ``memory_gb``. Checked four times a second by SIGALRM, so only in
    the main thread and when no other interval timer is set; elsewhere the block is unbounded."""
    usable = (threading.current_thread() is threading.main_thread()
              and hasattr(signal, "setitimer") and signal.getitimer(signal.ITIMER_REAL)[0] == 0)
    if not usable:
        yield
        return
    start, base = time.monotonic(), _rss_bytes()
    limit = memory_gb * (1 << 30)

    def check(signum, frame):
        if time.monotonic() - start > seconds:
            raise ModelError(f"{what} took more than {seconds:g} s (the discovery time limit); "
                             "try a smaller input size or a smaller model")
        if _rss_bytes() - base > limit:
            raise ModelError(f"{what} needed more than {memory_gb:g} GB (the discovery memory "
                             "limit); try a smaller input size or a smaller model")

    old = signal.signal(signal.SIGALRM, check)
    signal.setitimer(signal.ITIMER_REAL, 0.25, 0.25)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def check_runs(model: nn.Module, example: torch.Tensor) -> None:
    """One plain forward pass; a model that cannot take ``example`` is a one-line ModelError."""
    try:
        with torch.no_grad():
            model(example)
    except Exception as exc:  # noqa: BLE001 -- any failure of user code is reported in one line
        raise ModelError(f"the model does not run on an input of shape {tuple(example.shape)} "
                         f"({_first_line(exc)}); set data.image_size (or model.kwargs) to a size "
                         "it accepts") from None


def _tp_failure(exc: BaseException) -> ModelError:
    frames = [f.name for f in traceback.extract_tb(exc.__traceback__)
              if "torch_pruning" in f.filename]
    hint = ""
    if any("reshape" in f for f in frames):
        hint = ("; a view/reshape splits the channel dimension (such as a channel shuffle), "
                "which it cannot map")
    return ModelError(f"Torch-Pruning's dependency graph failed on this model ({_first_line(exc)})"
                      f"{hint}; searchprune cannot find its channel groups")


def trace_model(model: nn.Module, example: torch.Tensor) -> Trace:
    """Build the dependency graph of ``model`` (in eval mode) on one image, recording calls and
    shapes in the same pass. Raises ModelError (one line) when the model cannot be traced."""
    check_runs(model, example)
    names = {m: n for n, m in model.named_modules()}
    calls: list[Call] = []
    call_of: dict[Any, int] = {}
    counts: Counter = Counter()

    def hook(mod, inputs, out):
        out = out[0] if isinstance(out, (tuple, list)) else out
        if not isinstance(out, torch.Tensor):
            return
        name = names[mod]
        key = name if counts[name] == 0 else f"{name}#{counts[name]}"
        counts[name] += 1
        numel = out[0].numel() if out.dim() > 1 else out.numel()
        if out.grad_fn is not None:
            call_of.setdefault(out.grad_fn, len(calls))
        calls.append(Call(key, name, call_kind(mod), int(numel), tuple(out.shape)))

    leaves = [m for m in names if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    mode = _Shapes()
    try:
        with warnings.catch_warnings(), torch.enable_grad():
            warnings.simplefilter("ignore")
            graph = tp.DependencyGraph()
            with mode:
                graph.build_dependency(
                    model, example_inputs=(example,), verbose=False,
                    customized_pruners={IndexShortcut: IndexShortcutPruner()},
                )
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 -- Torch-Pruning's failures become one line
        raise _tp_failure(exc) from None
    finally:
        for h in handles:
            h.remove()
    param_names = {p: n for p, n in graph._param_to_name.items()}
    return Trace(graph, calls, call_of, mode.shapes, counts, param_names, mode.parts, mode.outs)
