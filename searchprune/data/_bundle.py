"""The splits a study works on (decoded when first read, held as stored), and the lazy
training set."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from searchprune.data._images import RawImages

__all__ = ["DataBundle", "Images", "Normalise", "Split", "TrainSet"]


class Images:
    """A split's images read like a float tensor, one slice at a time: ``images[a:b]`` is the
    normalised float32 batch of stored images ``a`` to ``b`` (only that batch is converted)."""

    def __init__(self, stored: torch.Tensor, normalise: Normalise | None) -> None:
        self.stored = stored
        self.normalise = normalise

    def __len__(self) -> int:
        return int(self.stored.shape[0])

    @property
    def shape(self) -> torch.Size:
        return self.stored.shape

    def __getitem__(self, index: slice | int | torch.Tensor) -> torch.Tensor:
        batch = self.stored[index]
        return batch if self.normalise is None else self.normalise(batch)


class Split:
    """One split's images and labels.

    Images are held as stored (uint8 for photos: a quarter of float32) and normalised when read:
    :attr:`images` slice by slice (what evaluation and BatchNorm recalibration use), :attr:`x`
    all at once (a new float32 tensor each time). A split from :func:`~searchprune.data.load_data`
    decodes its images the first time they are read, so a command that never reads a split
    never decodes it. ``Split(x, y)`` without ``normalise`` holds ``x`` as it is (already float).
    """

    def __init__(self, x: torch.Tensor | None, y: torch.Tensor,
                 normalise: Normalise | None = None, *, source: RawImages | None = None,
                 indices: torch.Tensor | None = None) -> None:
        if x is None and (source is None or indices is None):
            raise ValueError("a split needs its images or a source and indices to decode")
        self._stored = x
        self.y = y  # int64 (N,)
        self.normalise = normalise
        self._source, self._indices = source, indices

    @classmethod
    def lazy(cls, source: RawImages, indices: torch.Tensor, normalise: Normalise) -> Split:
        """The images of ``source`` at ``indices``, decoded when first read."""
        return cls(None, source.labels[indices].clone(), normalise, source=source,
                   indices=indices)

    @property
    def decoded(self) -> bool:
        return self._stored is not None

    @property
    def stored(self) -> torch.Tensor:
        """The images as stored, ``(N, C, H, W)`` (decoded now if not yet)."""
        if self._stored is None:
            assert self._source is not None and self._indices is not None
            self._stored = self._source.load(self._indices)
        return self._stored

    @property
    def images(self) -> Images:
        """The normalised images, converted batch by batch as they are sliced."""
        return Images(self.stored, self.normalise)

    @property
    def x(self) -> torch.Tensor:
        """All images normalised, float32 ``(N, C, H, W)`` (computed on each access)."""
        return self.images[:]

    def head(self, n: int) -> torch.Tensor:
        """The first ``n`` images normalised; decodes only those (and keeps none) when the split
        is not yet decoded. Splits are in random order, so they are a random sample."""
        if self._stored is None:
            assert self._source is not None and self._indices is not None
            return Images(self._source.load(self._indices[:n]), self.normalise)[:]
        return self.images[:n]

    def __len__(self) -> int:
        return int(self.y.numel())

    def __getitem__(self, index: slice) -> Split:
        """``split[:n]``: the first ``n`` images (splits are in random order); decodes the
        whole split once, so slicing it again decodes nothing."""
        return Split(self.stored[index], self.y[index], self.normalise)


@dataclass(frozen=True)
class Normalise:
    """Stored values -> ``(x / scale - mean) / std`` in float32, in that order, whatever the
    batch (the same floats for an image alone or in a whole split)."""

    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = (-1, 1, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(shape)
        std = torch.tensor(self.std, dtype=torch.float32).view(shape)
        out = x.to(torch.float32, copy=True)  # in place from here: one batch-sized buffer
        return out.div_(self.scale).sub_(mean).div_(std)


def _crop_flip(x: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Random ``pad``-pixel-padded crop and random horizontal flip of one ``(C, H, W)`` image."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad))
    i, j = torch.randint(0, 2 * pad + 1, (2,)).tolist()
    x = padded[:, i : i + h, j : j + w]
    if torch.rand(()) < 0.5:
        x = x.flip(-1)
    return x


class TrainSet(Dataset):
    """Training images by index, normalised on access, optionally augmented (crop + flip)."""

    def __init__(
        self, raw: RawImages, indices: torch.Tensor, normalise: Normalise, augment: bool
    ) -> None:
        self.raw = raw
        self.indices = indices
        self.normalise = normalise
        self.augment = augment

    def __len__(self) -> int:
        return int(self.indices.numel())

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = int(self.indices[i])
        x = self.raw.item(index)
        if self.augment:
            x = _crop_flip(x)
        return self.normalise(x), self.raw.labels[index]


@dataclass
class DataBundle:
    """Everything a study needs from the data: three fixed splits and the training set."""

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    calib: Split  # from train, disjoint from val
    val: Split  # ranks candidates
    test: Split  # final reports only
    seed: int = 0
    classes: tuple[str, ...] = ()
    augmentable: bool = True
    _train_raw: RawImages | None = field(default=None, repr=False)
    _train_indices: torch.Tensor | None = field(default=None, repr=False)
    _normalise: Normalise | None = field(default=None, repr=False)
    # confirmation images (re-score the best configurations), decoded on first use
    _confirm_raw: RawImages | None = field(default=None, repr=False)
    _confirm_indices: torch.Tensor | None = field(default=None, repr=False)
    _confirm: Split | None = field(default=None, repr=False)
    confirm_from: str = "test"  # "test": the validation half's rest; "train": a hold-out

    @property
    def confirm_size(self) -> int:
        """Confirmation images available (none decoded yet)."""
        return 0 if self._confirm_indices is None else int(self._confirm_indices.numel())

    @property
    def confirm(self) -> Split:
        """The confirmation images: disjoint from ``calib``, ``val``, ``test`` and the training
        images (see :func:`~searchprune.data.draw_splits`), decoded on first use."""
        if self._confirm is None:
            if self._confirm_raw is None or self._normalise is None or not self.confirm_size:
                raise ValueError(f"data bundle '{self.name}' has no confirmation images")
            self._confirm = Split.lazy(self._confirm_raw, self._confirm_indices,
                                       self._normalise)
        return self._confirm

    @property
    def train_size(self) -> int:
        """Training images (the official train set minus the val hold-out, if any)."""
        return 0 if self._train_indices is None else int(self._train_indices.numel())

    def train_set(self, augment: bool = False) -> Dataset:
        """The training images, decoded lazily; ``augment`` adds random crop (pad 4) + flip
        where it suits the data (not for digits)."""
        if self._train_raw is None or self._train_indices is None or self._normalise is None:
            raise ValueError(f"data bundle '{self.name}' has no training set")
        aug = augment and self.augmentable
        return TrainSet(self._train_raw, self._train_indices, self._normalise, aug)
