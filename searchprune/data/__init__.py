"""Data sets as fixed, seeded splits: :func:`load_data` -> :class:`DataBundle`.

Names: ``digits`` (scikit-learn, offline default), ``cifar10``, ``cifar100`` (torchvision) and
``imagefolder`` (``root/train`` and ``root/test`` or ``root/val``).
"""

from __future__ import annotations

import logging
import time

import torch

from searchprune.config import DataConfig
from searchprune.data._bundle import DataBundle, Images, Normalise, Split, TrainSet
from searchprune.data._cache import default_cache_dir
from searchprune.data._images import RawImages
from searchprune.data._sources import LOADERS, Source
from searchprune.data._splits import SplitIndices, draw_splits
from searchprune.errors import DataError, unknown_choice

__all__ = [
    "DataBundle",
    "Images",
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


def _input_shape(*candidates: tuple[RawImages, torch.Tensor]) -> tuple[int, int, int]:
    """The shape of one image (read from the first image's header: nothing is decoded)."""
    for raw, indices in candidates:
        if indices.numel():
            return raw.item_shape(int(indices[0]))
    raise DataError("the data has no calibration, validation or test images")


def _stats(source: Source, train: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if source.mean is not None and source.std is not None:
        return source.mean, source.std
    x = source.train.load(train).float() / source.scale
    return tuple(x.mean((0, 2, 3)).tolist()), tuple(x.std((0, 2, 3)).tolist())


def load_data(cfg: DataConfig, *, confirm_images: int | None = None) -> DataBundle:
    """Load ``cfg.name`` and draw its seeded splits; same config -> identical splits.

    ``calib``, ``val`` and ``test`` are decoded into memory (as stored: uint8 for photos) the
    first time they are read, not here; the training set and the confirmation images stay
    lazy. ``confirm_images``: with ``val_from: test``, how many of the validation half's unused
    images confirm (None: all); with ``val_from: train``, how many training images are held
    out before the training images are drawn (None: none).

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
    calib = Split.lazy(source.train, idx.calib, normalise)
    val = Split.lazy(val_raw, idx.val, normalise)
    test = Split.lazy(source.test, idx.test, normalise)
    shape = _input_shape((val_raw, idx.val), (source.train, idx.calib), (source.test, idx.test))
    _log.info(
        "%s: %d train, %d calib, %d val, %d test images found in %.1fs (decoded when used)",
        cfg.name, idx.train.numel(), len(calib), len(val), len(test),
        time.perf_counter() - start,
    )  # fmt: skip
    return DataBundle(
        name=source.name,
        num_classes=len(source.classes),
        input_shape=shape,
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
