"""Data sets as fixed, seeded, in-memory splits: :func:`load_data` -> :class:`DataBundle`.

Names: ``digits`` (scikit-learn, offline default), ``cifar10``, ``cifar100`` (torchvision) and
``imagefolder`` (``root/train`` and ``root/test`` or ``root/val``).
"""

from __future__ import annotations

import logging
import time

import torch

from searchprune.config import DataConfig
from searchprune.data._bundle import DataBundle, Normalise, Split, TrainSet
from searchprune.data._cache import default_cache_dir
from searchprune.data._images import RawImages
from searchprune.data._sources import LOADERS, Source
from searchprune.data._splits import SplitIndices, draw_splits
from searchprune.errors import DataError, unknown_choice

__all__ = [
    "DataBundle",
    "Split",
    "SplitIndices",
    "TrainSet",
    "default_cache_dir",
    "draw_splits",
    "list_datasets",
    "load_data",
]

_log = logging.getLogger(__name__)


def list_datasets() -> list[str]:
    return sorted(LOADERS)


def _split(raw: RawImages, indices: torch.Tensor, normalise: Normalise) -> Split:
    return Split(normalise(raw.load(indices)), raw.labels[indices].clone())


def _stats(source: Source, train: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if source.mean is not None and source.std is not None:
        return source.mean, source.std
    x = source.train.load(train).float() / source.scale
    return tuple(x.mean((0, 2, 3)).tolist()), tuple(x.std((0, 2, 3)).tolist())


def load_data(cfg: DataConfig, *, confirm_images: int | None = None) -> DataBundle:
    """Load ``cfg.name`` and draw its seeded splits; same config -> identical splits.

    ``calib``, ``val`` and ``test`` are decoded into memory; the training set and the
    confirmation images stay lazy. ``confirm_images``: with ``val_from: test``, how many of the
    validation half's unused images confirm (None: all); with ``val_from: train``, how many
    training images are held out before the training images are drawn (None: none).

    Raises:
        DataError: unknown name, missing or empty root, sizes that do not fit.
    """
    loader = LOADERS.get(cfg.name)
    if loader is None:
        raise DataError(unknown_choice("data set", cfg.name, list_datasets()))
    start = time.perf_counter()
    source = loader(cfg)
    idx = draw_splits(
        len(source.train),
        len(source.test),
        calib_size=cfg.calib_size,
        val_size=cfg.val_size,
        val_from=cfg.val_from,
        test_size=cfg.test_size,
        train_size=cfg.train_size,
        seed=cfg.seed,
        confirm_size=confirm_images,
    )
    mean, std = _stats(source, idx.train)
    normalise = Normalise(source.scale, mean, std)
    val_raw = source.train if idx.val_from == "train" else source.test
    calib = _split(source.train, idx.calib, normalise)
    val = _split(val_raw, idx.val, normalise)
    test = _split(source.test, idx.test, normalise)
    _log.info(
        "%s: %d train, %d calib, %d val, %d test images loaded in %.1fs",
        cfg.name, idx.train.numel(), len(calib), len(val), len(test),
        time.perf_counter() - start,
    )  # fmt: skip
    return DataBundle(
        name=source.name,
        num_classes=len(source.classes),
        input_shape=tuple(val.x.shape[1:]),  # type: ignore[arg-type]
        mean=mean,
        std=std,
        calib=calib,
        val=val,
        test=test,
        seed=cfg.seed,
        classes=source.classes,
        augmentable=source.augment,
        _train_raw=source.train,
        _train_indices=idx.train,
        _normalise=normalise,
        _confirm_raw=val_raw,
        _confirm_indices=idx.confirm,
        confirm_from=idx.val_from,
    )
