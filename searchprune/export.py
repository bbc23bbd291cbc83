"""A pruned model anyone can load: a ``torch.export`` program and/or an ONNX file (both with a
dynamic batch dimension), a plain state_dict with the width configuration, and a JSON card.
Loading needs only PyTorch, or only an ONNX runtime::

    import torch
    model = torch.export.load("model.pt2").module()
    logits = model(images)          # images: float32 (N, C, H, W), normalised as in card.json

    import onnxruntime
    session = onnxruntime.InferenceSession("model.onnx")
    logits = session.run(None, {"images": images.numpy()})[0]
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from searchprune.errors import ConfigError, SearchpruneError

__all__ = ["FORMATS", "check_onnx", "check_out_dir", "export_model", "export_onnx",
           "file_sha256", "measure_latency"]

FORMATS = ("torch", "onnx", "all")
PROGRAM = "model.pt2"
ONNX = "model.onnx"
STATE = "state_dict.pt"
CARD = "card.json"

_log = logging.getLogger(__name__)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_out_dir(out_dir: str | Path, force: bool = False) -> Path:
    """``out_dir`` as an absolute path; a non-empty folder is refused unless ``force``. What an
    interrupted export left next to it is dealt with first (:func:`recover_out_dir`)."""
    out = Path(out_dir).expanduser().absolute()
    recover_out_dir(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(f"--out {out} is not empty; pass --force to replace it")
    return out


def export_model(model: nn.Module, out_dir: str | Path, *, input_shape: tuple[int, ...],
                 widths: Mapping[str, int], card: Mapping[str, Any],
                 force: bool = False, format: str = "torch") -> dict[str, Any]:
    """Write the model in ``format`` (``torch``: ``model.pt2``; ``onnx``: ``model.onnx``;
    ``all``: both), ``state_dict.pt`` and ``card.json`` into ``out_dir``.

    ``input_shape`` is one example's shape with batch 1, e.g. ``(1, 3, 32, 32)``; the exported
    files accept any batch size. The card lists every file written (``files``) and, for ONNX,
    the largest difference between onnxruntime's logits and PyTorch's. Returns the card. The files are written into a
    temporary folder next to ``out_dir``, which is then renamed into place: a crash leaves the
    old folder or the new one (or, killed between the two renames, the old one aside, put back
    by the next export: :func:`recover_out_dir`). A non-empty ``out_dir`` is replaced only with
    ``force``.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {format!r}")
    out = check_out_dir(out_dir, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f"{_aside(out)}.", suffix=".tmp"))
    try:
        full = _write(model, tmp, input_shape, widths, card, format)
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return full


# -- the folders an export puts next to --out, and what a killed one leaves --------------------
def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _aside(out: Path, pid: int | None = None) -> str:
    """``.<out name>.<host>.<pid>``: the start of the names this process gives, next to
    ``out``, to its temporary folder (``.<random>.tmp`` follows), to the old ``out`` it moves
    aside (``.old``) and to the old one being deleted (``.del``)."""
    return f".{out.name}.{_host()}.{os.getpid() if pid is None else pid}"


def _leftovers(out: Path) -> list[tuple[Path, str]]:
    """(folder, kind) of what exports by processes of this host that are gone left next to
    ``out``; kind is ``tmp``, ``old`` or ``del``. Live processes' folders are left alone, and so
    are other hosts' (a shared disk: their processes cannot be asked)."""
    pattern = re.compile(re.escape(f".{out.name}.{_host()}.")
                         + r"(\d+)\.(?:[^.]+\.(tmp)|(old)|(del))")
    found = []
    with contextlib.suppress(OSError):
        for entry in out.parent.iterdir():
            m = pattern.fullmatch(entry.name)
            if m and not entry.is_symlink() and entry.is_dir() and not _alive(int(m[1])):
                found.append((entry, m[2] or m[3] or m[4]))
    return found


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def recover_out_dir(out: Path) -> None:
    """Undo what an export killed half-way left next to ``out``: with ``out`` missing, the old
    folder it had moved aside (``.old``) is put back (a warning says so); then every leftover
    temporary, old or half-deleted folder of a process that is gone is removed."""
    left = _leftovers(out)
    olds = [p for p, kind in left if kind == "old"]
    if olds and not out.exists():
        keep = max(olds, key=lambda p: p.stat().st_ctime)  # the last one moved aside
        os.rename(keep, out)
        left = [(p, k) for p, k in left if p != keep]
        _log.warning("restored %s from %s, left by an export that was killed", out, keep.name)
    for path, _ in left:
        _log.info("removing %s, left by an export that was killed", path)
        shutil.rmtree(path, ignore_errors=True)


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` is moved aside first (``.old``), then
    renamed ``.del`` and removed, so a kill at any point leaves either ``out`` or an ``.old``
    that :func:`recover_out_dir` puts back (never a half-deleted one)."""
    old = None
    if out.exists():
        old = out.with_name(f"{_aside(out)}.old")
        os.rename(out, old)
    os.rename(tmp, out)
    if old is not None:
        doomed = old.with_name(f"{_aside(out)}.del")
        os.rename(old, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


def _write(model: nn.Module, out: Path, input_shape: tuple[int, ...],
           widths: Mapping[str, int], card: Mapping[str, Any], format: str) -> dict[str, Any]:
    model = model.cpu().eval()
    example = torch.randn(*input_shape)
    files: dict[str, str] = {}
    load: dict[str, str] = {}
    full = dict(card)
    if format in ("torch", "all"):
        program = torch.export.export(model, (torch.cat([example, example]),),
                                      dynamic_shapes=({0: _batch_dim()},))
        torch.export.save(program, out / PROGRAM)
        files["program"] = PROGRAM
        load["torch"] = f"torch.export.load('{PROGRAM}').module()"
    if format in ("onnx", "all"):
        export_onnx(model, out / ONNX, input_shape)
        files["onnx"] = ONNX
        load["onnx"] = f"onnxruntime.InferenceSession('{ONNX}')  # input 'images', output 'logits'"
        full["onnx_check"] = check_onnx(out / ONNX, model, input_shape)
    torch.save({"state_dict": model.state_dict(), "widths": dict(widths)}, out / STATE)
    files["state_dict"] = STATE
    files["card"] = CARD
    full.update({"input_shape": list(input_shape), "widths": dict(widths), "format": format,
                 "files": files, "load": load})
    (out / CARD).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
    return full


def _batch_dim() -> Any:
    return torch.export.Dim("batch", min=1, max=4096)


def export_onnx(model: nn.Module, path: str | Path, input_shape: tuple[int, ...]) -> Path:
    """Write ``model`` as one ONNX file (weights inside) with input ``images`` and output
    ``logits``, both with a dynamic batch dimension ``batch`` (torch.export-based exporter)."""
    import warnings

    _need("onnx", "onnxscript")
    model = model.cpu().eval()
    example = torch.randn(*input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter notices about opset choices
        torch.onnx.export(model, (torch.cat([example, example]),), str(path), dynamo=True,
                          input_names=["images"], output_names=["logits"],
                          dynamic_shapes=({0: _batch_dim()},), external_data=False,
                          verbose=False)
    return Path(path)


def _need(*modules: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise SearchpruneError(f"ONNX export needs {' and '.join(missing)}: pip install "
                               f"{' '.join(missing)} (or use --format torch)")


def check_onnx(path: str | Path, model: nn.Module, input_shape: tuple[int, ...], *,
               batch: int = 8, seed: int = 0) -> dict[str, Any]:
    """Run the ONNX file with onnxruntime on CPU and compare its logits with ``model``'s on a
    seeded random batch: ``{"max_abs_diff", "batch", "runtime"}``."""
    _need("onnxruntime")
    import onnxruntime

    x = torch.randn(batch, *input_shape[1:], generator=torch.Generator().manual_seed(seed))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    with torch.inference_mode():
        expected = model.cpu().eval()(x)
    return {"max_abs_diff": float((got - expected).abs().max()), "batch": batch,
            "runtime": f"onnxruntime {onnxruntime.__version__} (CPU)"}


def measure_latency(model, input_shape: tuple[int, ...], batch: int, *, repeats: int = 20,
                    warmup: int = 3, threads: int | None = None) -> float:
    """Median wall time in milliseconds of one forward pass on a random batch (CPU, inference
    mode, ``warmup`` untimed runs first; ``threads``: torch CPU threads while timing, the
    current count when None)."""
    from searchprune.latency import cpu_threads, time_forward

    x = torch.randn(batch, *input_shape[1:])
    with cpu_threads(threads):
        return time_forward(model, x, repeats=repeats, warmup=warmup)
