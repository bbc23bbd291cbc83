"""One loader per data set name: it finds the raw train/test images and their conventions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from searchprune.config import DataConfig
from searchprune.data._cache import default_cache_dir
from searchprune.data._images import ArrayImages, FileImages, RawImages
from searchprune.errors import DataError

__all__ = ["DIGITS_TEST_SIZE", "IMAGENET_MEAN", "IMAGENET_STD", "LOADERS", "Source"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DIGITS_TEST_SIZE = 300


@dataclass
class Source:
    """Raw images of a data set. ``mean``/``std`` of None: computed from the training split."""

    name: str
    classes: tuple[str, ...]
    train: RawImages
    test: RawImages
    scale: float = 255.0  # stored value of a white pixel
    mean: tuple[float, ...] | None = IMAGENET_MEAN
    std: tuple[float, ...] | None = IMAGENET_STD
    augment: bool = True  # random crop + flip make sense for these images


def _digits(cfg: DataConfig) -> Source:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.uint8).unsqueeze(1)  # values 0..16
    labels = torch.as_tensor(digits.target, dtype=torch.long)
    # scikit-learn ships no test split: hold out a seeded DIGITS_TEST_SIZE as the official one.
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(cfg.seed + 7919))
    test, train = perm[:DIGITS_TEST_SIZE], perm[DIGITS_TEST_SIZE:]
    return Source(
        name="digits",
        classes=tuple(str(c) for c in range(10)),
        train=ArrayImages(images[train], labels[train], cfg.image_size),
        test=ArrayImages(images[test], labels[test], cfg.image_size),
        scale=16.0,
        mean=None,
        std=None,
        augment=False,
    )


def _cifar(cfg: DataConfig, name: str) -> Source:
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    if cfg.root is None and not cfg.download:
        raise DataError(f"data.root is not set for {name}; set data.root or data.download: true")
    root = Path(cfg.root).expanduser() if cfg.root else default_cache_dir() / "datasets"
    if not cfg.download and not root.is_dir():
        raise DataError(f"data root not found: {root}; set data.root or data.download: true")
    try:
        train = cls(str(root), train=True, download=cfg.download)
        test = cls(str(root), train=False, download=cfg.download)
    except RuntimeError:
        raise DataError(
            f"{name} not found under {root}; set data.root to the folder holding the extracted "
            "archive or data.download: true"
        ) from None
    except OSError as exc:
        raise DataError(f"cannot download {name} to {root}: {exc}") from None

    def raw(ds: datasets.CIFAR10) -> ArrayImages:
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        return ArrayImages(x, torch.as_tensor(ds.targets), cfg.image_size)

    return Source(name, tuple(train.classes), raw(train), raw(test))


def _imagefolder(cfg: DataConfig) -> Source:
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    if cfg.root is None:
        raise DataError("data.root is not set; imagefolder needs a folder with train/ and test/")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(f"data root not found: {root}")
    train_dir = root / "train"
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DataError(
            f"{root} needs train/ and test/ (or val/) folders in ImageFolder layout "
            "(train/<class>/<image>.jpg)"
        )
    classes = sorted(e.name for e in train_dir.iterdir() if e.is_dir())
    if not classes:
        raise DataError(f"no class folders in {train_dir}")
    if len(classes) < 2:
        raise DataError(f"{train_dir} has one class folder ({classes[0]}); a classifier needs "
                        "at least two")
    test_classes = sorted(e.name for e in test_dir.iterdir() if e.is_dir())
    if test_classes != classes:
        missing = sorted(set(classes) - set(test_classes))
        extra = sorted(set(test_classes) - set(classes))
        parts = ([f"missing {', '.join(missing[:3])}"] if missing else []) + (
            [f"not in train: {', '.join(extra[:3])}"] if extra else [])
        raise DataError(f"the class folders of {test_dir} differ from {train_dir} "
                        f"({'; '.join(parts)}); both need the same classes")
    class_to_idx = {c: i for i, c in enumerate(classes)}

    def files(folder: Path) -> FileImages:
        found = make_dataset(folder, class_to_idx, IMG_EXTENSIONS, allow_empty=True)
        if not found:
            raise DataError(f"no images in {folder} (ImageFolder layout: <class>/<image>.jpg)")
        present = {y for _, y in found}
        empty = [c for c in classes if class_to_idx[c] not in present]
        if empty:
            raise DataError(f"{folder} has no images of class {', '.join(empty[:3])}; every "
                            "class needs images in train and in test")
        return FileImages([p for p, _ in found], [y for _, y in found], cfg.image_size)

    return Source("imagefolder", tuple(classes), files(train_dir), files(test_dir))


LOADERS: dict[str, Callable[[DataConfig], Source]] = {
    "digits": _digits,
    "cifar10": lambda cfg: _cifar(cfg, "cifar10"),
    "cifar100": lambda cfg: _cifar(cfg, "cifar100"),
    "imagefolder": _imagefolder,
}
