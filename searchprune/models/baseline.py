"""A pre-trained starting point for the offline default: ResNet-8 trained on digits, cached."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from searchprune.config import ModelConfig
from searchprune.errors import CheckpointError, ModelError
from searchprune.models import build_model, load_checkpoint

if TYPE_CHECKING:
    from searchprune.data import DataBundle

__all__ = ["DIGITS_RECIPE", "digits_baseline"]

_log = logging.getLogger(__name__)

# Part of the cache key: changing the recipe retrains.
DIGITS_RECIPE = {"epochs": 15, "lr": 0.05, "batch_size": 64, "weight_decay": 5e-4, "version": 1}


def _digest_tensor(h: hashlib._Hash, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)};".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def _data_digest(bundle: DataBundle) -> str:
    """What training sees and reports on: the training images as stored (after any resize,
    so ``data.image_size`` counts) and their labels, the normalisation, and the validation
    split (``val_from``, ``val_size``, seed). Digits are small: hashing them takes milliseconds."""
    h = hashlib.sha256()
    h.update(json.dumps([bundle.name, list(bundle.input_shape), list(bundle.mean),
                         list(bundle.std)]).encode())
    raw, idx = bundle._train_raw, bundle._train_indices
    if raw is not None and idx is not None:
        _digest_tensor(h, raw.load(idx))
        _digest_tensor(h, raw.labels[idx])
    _digest_tensor(h, bundle.val.x)
    _digest_tensor(h, bundle.val.y)
    return h.hexdigest()


def _cache_file(model_cfg: ModelConfig, bundle: DataBundle, cache_dir: Path) -> Path:
    model = {k: v for k, v in dataclasses.asdict(model_cfg).items()
             if k != "trust_checkpoint" and not (k == "kwargs" and not v)}  # keys as before
    key = {"model": model, "data": _data_digest(bundle), "seed": bundle.seed,
           "recipe": DIGITS_RECIPE}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir / "baselines" / f"{model_cfg.name}-{digest}.pt"


def digits_baseline(
    model_cfg: ModelConfig,
    bundle: DataBundle,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> nn.Module:
    """The model to prune, in eval mode on the CPU.

    For ``digits_resnet8`` without a checkpoint, train it on the digits training split (a few
    seconds on a CPU) and cache the weights under ``cache_dir`` (default ``$SEARCHPRUNE_CACHE``
    or ``~/.cache/searchprune``), keyed by the model config, the recipe and a hash of the
    training and validation data; later calls load the cache (weights-only, and only a file
    this user owns in a folder no one else can swap it in: see :mod:`searchprune.data._cache`).
    Any other model is built by :func:`build_model` as is.
    """
    num_classes, in_channels = bundle.num_classes, bundle.input_shape[0]
    if model_cfg.name != "digits_resnet8" or model_cfg.checkpoint:
        return build_model(model_cfg, num_classes=num_classes, in_channels=in_channels)
    if bundle.name != "digits":
        raise ModelError(
            f"digits_resnet8 trains its baseline on the digits data, not '{bundle.name}'; "
            "set data.name: digits or give model.checkpoint"
        )
    from searchprune.data import default_cache_dir
    from searchprune.data._cache import cache_folder

    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = _cache_file(model_cfg, bundle, root)
    with cache_folder(root, path.parent.name) as folder:
        cached = _load_cached(folder, path.name, model_cfg, bundle)
        if cached is not None:
            return cached
        model = _train(model_cfg, bundle, progress)
        if folder is not None:  # a refused folder is never written to either
            folder.save(model.state_dict(), path.name)
            _log.info("digits baseline cached at %s", path)
    return model.cpu().eval()


def _load_cached(folder, name: str, model_cfg: ModelConfig, bundle: DataBundle
                 ) -> nn.Module | None:
    """The cached baseline, read from the checked file's own descriptor; None to retrain."""
    f = folder.open(name) if folder is not None else None
    if f is None:
        return None
    model = build_model(model_cfg, num_classes=bundle.num_classes,
                        in_channels=bundle.input_shape[0])
    with f:
        try:
            return load_checkpoint(model, f, name=model_cfg.name).eval()
        except CheckpointError:
            _log.warning("ignoring baseline cache %s: not a weights-only file that fits the "
                         "model; retraining", f.name)
    return None


def _train(model_cfg: ModelConfig, bundle: DataBundle, progress: bool) -> nn.Module:
    from searchprune.train import fit

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(bundle.seed)
        model = build_model(model_cfg, num_classes=bundle.num_classes,
                            in_channels=bundle.input_shape[0])
    recipe = {k: v for k, v in DIGITS_RECIPE.items() if k != "version"}
    records = fit(model, bundle.train_set(), seed=bundle.seed, val=bundle.val,
                  progress=progress, **recipe)  # type: ignore[arg-type]  # fmt: skip
    _log.info("digits baseline: val top-1 %.2f%%", records[-1]["val_top1"])
    return model
