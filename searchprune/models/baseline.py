"""A pre-trained starting point for the offline default: ResNet-8 trained on digits, cached."""

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

from searchprune.config import ModelConfig
from searchprune.errors import CheckpointError, ModelError
from searchprune.models import build_model, load_checkpoint

if TYPE_CHECKING:
    from searchprune.data import DataBundle

__all__ = ["DIGITS_RECIPE", "digits_baseline"]

_log = logging.getLogger(__name__)

# Part of the cache key: changing the recipe retrains.
DIGITS_RECIPE = {"epochs": 15, "lr": 0.05, "batch_size": 64, "weight_decay": 5e-4, "version": 1}


def _cache_file(model_cfg: ModelConfig, bundle: DataBundle, cache_dir: Path) -> Path:
    key = {
        "model": dataclasses.asdict(model_cfg),
        "data": [bundle.name, bundle.seed, bundle.train_size, len(bundle.calib),
                 len(bundle.val), len(bundle.test)],
        "recipe": DIGITS_RECIPE,
    }  # fmt: skip
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
    or ``~/.cache/searchprune``), keyed by the model config, data seed and split sizes; later
    calls load the cache. Any other model is built by :func:`build_model` as is.
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
    from searchprune.train import fit

    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = _cache_file(model_cfg, bundle, root)
    if path.is_file():
        model = build_model(model_cfg, num_classes=num_classes, in_channels=in_channels)
        try:
            return load_checkpoint(model, path, name=model_cfg.name).eval()
        except CheckpointError as exc:
            _log.warning("ignoring broken baseline cache (%s); retraining", exc)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(bundle.seed)
        model = build_model(model_cfg, num_classes=num_classes, in_channels=in_channels)
    recipe = {k: v for k, v in DIGITS_RECIPE.items() if k != "version"}
    records = fit(model, bundle.train_set(), seed=bundle.seed, val=bundle.val,
                  progress=progress, **recipe)  # type: ignore[arg-type]  # fmt: skip
    _log.info("digits baseline: val top-1 %.2f%%, cached at %s", records[-1]["val_top1"], path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return model.cpu().eval()
