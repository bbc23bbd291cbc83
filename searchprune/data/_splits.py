"""Seeded, disjoint split indices: calib / val / train from the training images, test apart."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from searchprune.errors import DataError

__all__ = ["SplitIndices", "draw_splits"]


@dataclass(frozen=True)
class SplitIndices:
    """Indices into the official train (``train``, ``calib``) and test (``test``) sets;
    ``val`` indexes the set named by ``val_from``. ``calib`` is a subset of ``train``."""

    train: torch.Tensor
    calib: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    val_from: str


def draw_splits(
    n_train: int,
    n_test: int,
    *,
    calib_size: int,
    val_size: int,
    val_from: str = "train",
    test_size: int | None = None,
    train_size: int | None = None,
    seed: int = 0,
) -> SplitIndices:
    """Draw the splits from one seeded generator; the same arguments give the same indices.

    ``val_from="train"``: ``val`` is a hold-out of ``val_size`` training images and ``train``
    is the rest. ``val_from="test"``: the test set is halved at random, ``val`` takes up to
    ``val_size`` images of the first half and ``test`` is the second half. ``calib`` is the
    first ``calib_size`` images of the (shuffled) ``train``; ``test_size`` caps ``test`` and
    ``train_size`` caps ``train`` (a seeded subset, e.g. to train from scratch on a CPU).
    Splits are kept in shuffled order, so any prefix is a random sample.
    """
    gen = torch.Generator().manual_seed(seed)
    perm_train = torch.randperm(n_train, generator=gen)
    perm_test = torch.randperm(n_test, generator=gen)
    if val_from == "train":
        if val_size >= n_train:
            raise DataError(
                f"data.val_size {val_size} leaves no training images "
                f"(the training set has {n_train})"
            )
        val, train, test = perm_train[:val_size], perm_train[val_size:], perm_test
    elif val_from == "test":
        half = n_test // 2
        val, train, test = perm_test[: min(val_size, half)], perm_train, perm_test[half:]
    else:
        raise DataError(f"data.val_from must be 'train' or 'test', got '{val_from}'")
    if train_size is not None:
        if train_size < 1:
            raise DataError(f"data.train_size must be >= 1 (or left out), got {train_size}")
        train = train[:train_size]
    if calib_size > train.numel():
        raise DataError(
            f"data.calib_size {calib_size} exceeds the {train.numel()} training images left "
            "after the val hold-out; lower data.calib_size"
        )
    if test_size is not None:
        test = test[:test_size]
    return SplitIndices(train, train[:calib_size], val, test, val_from)
