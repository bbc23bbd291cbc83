"""Loading model weights from files saved by other code (CUDA tensors, ``module.`` prefixes...).

Files are read with ``torch.load(..., weights_only=True)``: tensors and plain containers only,
so a checkpoint cannot run code when it is opened. A file that needs full unpickling (objects
other than tensors, e.g. an ``argparse.Namespace`` saved next to the weights) is refused unless
the caller passes ``trust=True`` (``model.trust_checkpoint: true`` / ``--trust-checkpoint``);
files searchprune writes itself (caches, supernets, fine-tuned weights) never get that opt-in.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from searchprune.errors import CheckpointError, UntrustedCheckpointError

__all__ = ["load_checkpoint", "load_weights", "read_state_dict"]

_SHOWN = 3  # how many offending keys an error message names per kind

# A file name, or a file already open for reading (a cache file checked on its descriptor).
Source = str | Path | IO[bytes]


def _where(source: Source) -> Path:
    return Path(source if isinstance(source, (str, Path)) else source.name)


def load_weights(path: Source, *, trust: bool = False) -> Any:
    """``torch.load`` of ``path`` (a file name or an open binary file) on the CPU,
    weights-only unless ``trust``.

    Raises:
        CheckpointError: the file is truncated or not a PyTorch file (the message names it).
        UntrustedCheckpointError: it holds objects that only full unpickling can restore and
            ``trust`` is False.
    """
    source, path = path, _where(path)
    unreadable = CheckpointError(
        f"cannot read checkpoint {path}: truncated or not a PyTorch file"
    )
    try:
        return torch.load(path if isinstance(source, (str, Path)) else source,
                          map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        if trust or "weights_only" not in str(exc):
            raise unreadable from None
    except Exception:  # truncated files fail anywhere in the unpickler (EOFError, KeyError...)
        raise unreadable from None
    # A valid pickle with objects outside the weights-only allow-list: loading it fully would
    # run whatever code the file names, so only an explicit opt-in does that.
    raise UntrustedCheckpointError(
        f"checkpoint {path} holds objects other than tensors, and loading it would run code "
        "from the file; if you trust it, set model.trust_checkpoint: true (or pass "
        "--trust-checkpoint)", str(path)
    ) from None


def read_state_dict(path: Source, *, trust: bool = False) -> dict[str, torch.Tensor]:
    """Read the tensors of a checkpoint file on the CPU (weights-only unless ``trust``).

    Accepts a plain state_dict or a dict holding one under ``state_dict`` or ``model``; a
    ``module.`` prefix (``nn.DataParallel``) is stripped.
    """
    p = _where(path).expanduser()
    if isinstance(path, (str, Path)):
        if not p.is_file():
            raise CheckpointError(f"checkpoint not found: {p}")
        path = p
    obj = load_weights(path, trust=trust)
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"checkpoint {p} holds no state_dict (expected tensors, or a dict with "
            "'state_dict' or 'model')"
        )
    prefix = "module."
    if obj and all(k.startswith(prefix) for k in obj):
        obj = {k[len(prefix) :]: v for k, v in obj.items()}
    return dict(obj)


def _shape(t: torch.Tensor) -> str:
    return "x".join(str(s) for s in t.shape) or "scalar"


def _names(keys: list[str]) -> str:
    more = f" (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def load_checkpoint(model: nn.Module, path: Source, *, name: str | None = None,
                    trust: bool = False) -> nn.Module:
    """Load the weights in ``path`` into ``model`` (in place) and return it.

    Missing ``num_batches_tracked`` buffers (older checkpoints) are tolerated; any other missing
    or unexpected key, or a shape mismatch, raises :class:`CheckpointError` naming up to three
    of each. ``trust`` allows full unpickling (see the module docstring).
    """
    state = read_state_dict(path, trust=trust)
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} ({_shape(state[k])} in file, {_shape(own[k])} in model)"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_names(unexpected)}")
        if wrong:
            parts.append(f"wrong shapes {_names(wrong)}")
        label = name or type(model).__name__
        raise CheckpointError(
            f"checkpoint {_where(path).expanduser()} does not fit model {label}: " + "; ".join(parts)
        )
    model.load_state_dict(state, strict=False)
    return model
