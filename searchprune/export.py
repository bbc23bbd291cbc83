"""A pruned model anyone can load: a ``torch.export`` program, a plain state_dict with the
width configuration, and a JSON card. Loading needs only PyTorch::

    import torch
    model = torch.export.load("model.pt2").module()
    logits = model(images)          # images: float32 (N, C, H, W), normalised as in card.json
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from searchprune.errors import ConfigError

__all__ = ["check_out_dir", "export_model", "file_sha256", "measure_latency"]

PROGRAM = "model.pt2"
STATE = "state_dict.pt"
CARD = "card.json"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_out_dir(out_dir: str | Path, force: bool = False) -> Path:
    """``out_dir`` as an absolute path; a non-empty folder is refused unless ``force``."""
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(f"--out {out} is not empty; pass --force to replace it")
    return out


def export_model(model: nn.Module, out_dir: str | Path, *, input_shape: tuple[int, ...],
                 widths: Mapping[str, int], card: Mapping[str, Any],
                 force: bool = False) -> dict[str, Any]:
    """Write ``model.pt2``, ``state_dict.pt`` and ``card.json`` into ``out_dir``.

    ``input_shape`` is one example's shape with batch 1, e.g. ``(1, 3, 32, 32)``; the exported
    program accepts any batch size. Returns the card as written. The files are written into a
    temporary folder next to ``out_dir``, which is then renamed into place: a crash leaves the
    old folder or the new one. A non-empty ``out_dir`` is replaced only with ``force``.
    """
    out = check_out_dir(out_dir, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        full = _write(model, tmp, input_shape, widths, card)
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return full


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` is moved aside first, then removed."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.{os.getpid()}.old")
        os.rename(out, old)
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write(model: nn.Module, out: Path, input_shape: tuple[int, ...],
           widths: Mapping[str, int], card: Mapping[str, Any]) -> dict[str, Any]:
    model = model.cpu().eval()
    example = torch.randn(*input_shape)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model, (torch.cat([example, example]),),
                                  dynamic_shapes=({0: batch},))
    torch.export.save(program, out / PROGRAM)
    torch.save({"state_dict": model.state_dict(), "widths": dict(widths)}, out / STATE)
    full = dict(card)
    full.update({"input_shape": list(input_shape), "widths": dict(widths),
                 "files": {"program": PROGRAM, "state_dict": STATE},
                 "load": f"torch.export.load('{PROGRAM}').module()"})
    (out / CARD).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
    return full


def measure_latency(model, input_shape: tuple[int, ...], batch: int, *, repeats: int = 20,
                    warmup: int = 3) -> float:
    """Median wall time in milliseconds of one forward pass on a random batch (CPU, inference
    mode, ``warmup`` untimed runs first)."""
    x = torch.randn(batch, *input_shape[1:])
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)
