"""Raw image sets: uint8 (or small-integer) images addressed by index, decoded on demand."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from searchprune.errors import DataError

__all__ = ["ArrayImages", "FileImages", "RawImages"]


def _fit_size(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """Resize the shorter side to ``size`` and center-crop to ``size x size``."""
    if size is None or x.shape[-2:] == (size, size):
        return x
    return TF.center_crop(TF.resize(x, size, antialias=True), [size, size])


class RawImages:
    """Images in their stored value range, ``(C, H, W)`` per item, plus int64 labels."""

    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.numel())

    def item(self, index: int) -> torch.Tensor:
        raise NotImplementedError

    def item_shape(self, index: int) -> tuple[int, int, int]:
        """``(C, H, W)`` of :meth:`item` ``(index)``, without decoding it where possible."""
        return tuple(self.item(index).shape)  # type: ignore[return-value]

    def load(self, indices: torch.Tensor) -> torch.Tensor:
        """A batch ``(N, C, H, W)`` of the images at ``indices``."""
        raise NotImplementedError


class ArrayImages(RawImages):
    """Images already in memory (scikit-learn digits, torchvision CIFAR arrays)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, image_size: int | None = None):
        self.images = images  # (N, C, H, W)
        self.labels = labels.long()
        self.image_size = image_size

    def item(self, index: int) -> torch.Tensor:
        return _fit_size(self.images[index], self.image_size)

    def item_shape(self, index: int) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        size = self.image_size
        return (int(c), int(h), int(w)) if size is None else (int(c), size, size)

    def load(self, indices: torch.Tensor) -> torch.Tensor:
        return _fit_size(self.images[indices], self.image_size)


def _decode(path: str, size: int | None) -> np.ndarray:
    """One image as uint8 RGB ``(H, W, 3)``; a file PIL cannot read is a one-line
    :class:`DataError` naming it."""
    try:
        return _decode_file(path, size)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _unreadable(path, exc) from None


def _unreadable(path: str, exc: BaseException) -> DataError:
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return DataError(f"cannot read image {path}: {reason}; remove or replace the file")


def _header_size(path: str) -> tuple[int, int]:
    """``(width, height)`` from the file's header (the pixels are not decoded)."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _unreadable(path, exc) from None


def _decode_file(path: str, size: int | None) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("RGB")
        if size is not None and im.size != (size, size):
            w, h = im.size
            scale = size / min(w, h)
            new = (max(size, round(w * scale)), max(size, round(h * scale)))
            im = im.resize(new, Image.BILINEAR)
            left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
            im = im.crop((left, top, left + size, top + size))
        return np.array(im, dtype=np.uint8)


class FileImages(RawImages):
    """Image files (ImageFolder layout), decoded with PIL when asked for."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int], image_size: int | None = None):
        self.paths = list(paths)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.image_size = image_size

    def item(self, index: int) -> torch.Tensor:
        return torch.from_numpy(_decode(self.paths[index], self.image_size)).permute(2, 0, 1)

    def item_shape(self, index: int) -> tuple[int, int, int]:
        if self.image_size is not None:
            return (3, self.image_size, self.image_size)
        w, h = _header_size(self.paths[index])
        return (3, h, w)

    def load(self, indices: torch.Tensor) -> torch.Tensor:
        paths = [self.paths[i] for i in indices.tolist()]
        workers = min(32, 8 * (os.cpu_count() or 1))  # I/O-bound on cold files
        with ThreadPoolExecutor(workers) as pool:
            arrays = list(pool.map(lambda p: _decode(p, self.image_size), paths, chunksize=64))
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise DataError(
                f"images under {os.path.dirname(os.path.dirname(paths[0]))} have different sizes "
                f"({', '.join(str(s[:2]) for s in list(shapes)[:3])}); set data.image_size"
            )
        if not arrays:
            return torch.empty(0, 3, self.image_size or 0, self.image_size or 0, dtype=torch.uint8)
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
