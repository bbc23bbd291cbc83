"""Networks searchprune trains itself when no checkpoint is given, by a fixed recipe, cached.

- ``digits_resnet8`` on the scikit-learn digits (the offline default; seconds on a CPU),
- ``cifar_mobilenet_v2`` on CIFAR-10 (``data.name: cifar10``, or an ImageFolder copy of it):
  the MobileNetV2 studies' starting point (``configs/models/mobilenetv2-cifar10.yaml``;
  about 45 minutes on two CPU cores at width 0.5, 76.4% test top-1).

A recipe is part of the cache key: changing it retrains.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from searchprune._recipes import TRAINED_ON, has_recipe
from searchprune.config import ModelConfig
from searchprune.errors import CheckpointError, ModelError
from searchprune.models import build_model, load_checkpoint

if TYPE_CHECKING:
    from searchprune.data import DataBundle

__all__ = ["DIGITS_RECIPE", "MOBILENET_RECIPE", "RECIPES", "digits_baseline", "has_recipe",
           "trained_baseline"]

_log = logging.getLogger(__name__)

# Part of the cache key: changing the recipe retrains.
DIGITS_RECIPE = {"epochs": 15, "lr": 0.05, "batch_size": 64, "weight_decay": 5e-4, "version": 1}
# SGD (momentum 0.9, per-step cosine from lr), random crop (pad 4) + horizontal flip.
MOBILENET_RECIPE = {"epochs": 15, "lr": 0.1, "batch_size": 128, "weight_decay": 5e-4,
                    "augment": True, "version": 1}

# model name -> recipe name (the data each trains on: searchprune._recipes.TRAINED_ON); looked
# up by name so that a test can shorten one (monkeypatch the module constant).
RECIPES = {"digits_resnet8": "DIGITS_RECIPE", "cifar_mobilenet_v2": "MOBILENET_RECIPE"}


def _recipe(name: str) -> dict:
    return globals()[RECIPES[name]]


def _digest_tensor(h: hashlib._Hash, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)};".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def _data_digest(bundle: DataBundle, with_val: bool = True) -> str:
    """What training sees: the training images as stored (after any resize, so
    ``data.image_size`` counts) and their labels, and the normalisation; ``with_val`` also the
    validation split it reports on (``val_from``, ``val_size``, seed; the digits key). Images
    in memory are hashed by value (digits: milliseconds); images in a folder by their paths and
    file sizes (decoding 50,000 JPEGs to hash them would take longer than a trial)."""
    h = hashlib.sha256()
    h.update(json.dumps([bundle.name, list(bundle.input_shape), list(bundle.mean),
                         list(bundle.std)]).encode())
    raw, idx = bundle._train_raw, bundle._train_indices
    if raw is not None and idx is not None:
        files = getattr(raw, "paths", None)  # FileImages
        if files is not None:
            h.update(json.dumps([getattr(raw, "image_size", None)]).encode())
            for i in idx.tolist():
                path = files[i]
                h.update(f"{os.path.basename(os.path.dirname(path))}/{os.path.basename(path)}:"
                         f"{os.path.getsize(path)};".encode())
        else:
            _digest_tensor(h, raw.load(idx))
        _digest_tensor(h, raw.labels[idx])
    if with_val:
        _digest_tensor(h, bundle.val.x)
        _digest_tensor(h, bundle.val.y)
    return h.hexdigest()


def _cache_file(model_cfg: ModelConfig, bundle: DataBundle, cache_dir: Path) -> Path:
    model = {k: v for k, v in dataclasses.asdict(model_cfg).items()
             if k != "trust_checkpoint" and not (k == "kwargs" and not v)}  # keys as before
    digits = model_cfg.name == "digits_resnet8"
    key = {"model": model, "data": _data_digest(bundle, with_val=digits), "seed": bundle.seed,
           "recipe": _recipe(model_cfg.name)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir / "baselines" / f"{model_cfg.name}-{digest}.pt"


def trained_baseline(
    model_cfg: ModelConfig,
    bundle: DataBundle,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> nn.Module:
    """The model to prune, in eval mode on the CPU.

    For a model with a recipe (:data:`RECIPES`) and no checkpoint, train it on the training
    split and cache the weights under ``cache_dir`` (default ``$SEARCHPRUNE_CACHE`` or
    ``~/.cache/searchprune``), keyed by the model config, the recipe, the seed and a digest of
    the training data (digits: and of the validation split); later calls load the cache
    (weights-only, and only a file this user owns in a folder no one else can swap it in: see
    :mod:`searchprune.data._cache`). Any other model is built by :func:`build_model` as is.
    """
    num_classes, in_channels = bundle.num_classes, bundle.input_shape[0]
    if not has_recipe(model_cfg):
        return build_model(model_cfg, num_classes=num_classes, in_channels=in_channels)
    datasets = TRAINED_ON[model_cfg.name]
    if bundle.name not in datasets:
        raise ModelError(
            f"{model_cfg.name} trains its baseline on {' or '.join(datasets)} data, not "
            f"'{bundle.name}'; set data.name: {datasets[0]} or give model.checkpoint"
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
            _log.info("%s baseline cached at %s", model_cfg.name, path)
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
    recipe = {k: v for k, v in _recipe(model_cfg.name).items() if k != "version"}
    augment = bool(recipe.pop("augment", False))
    records = fit(model, bundle.train_set(augment=augment), seed=bundle.seed, val=bundle.val,
                  progress=progress, **recipe)  # type: ignore[arg-type]  # fmt: skip
    seconds = sum(r["seconds"] for r in records)
    _log.info("%s baseline: val top-1 %.2f%% after %d epochs (%.0f s)", model_cfg.name,
              records[-1]["val_top1"], len(records), seconds)
    return model


def digits_baseline(model_cfg: ModelConfig, bundle: DataBundle,
                    cache_dir: str | Path | None = None, progress: bool = False) -> nn.Module:
    """:func:`trained_baseline` (its first name, from when digits had the only recipe)."""
    return trained_baseline(model_cfg, bundle, cache_dir, progress)
