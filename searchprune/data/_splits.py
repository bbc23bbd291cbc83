"""Seeded, disjoint split indices: calib / val / train from the training images, test apart, and
the confirmation images (re-scoring a study's best configurations) apart from all of them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from searchprune.errors import DataError

__all__ = ["SplitIndices", "draw_splits"]


@dataclass(frozen=True)
class SplitIndices:
    """Indices into the official train (``train``, ``calib``) and test (``test``) sets;
    ``val`` and ``confirm`` index the set named by ``val_from``. ``calib`` is a subset of
    ``train``; ``confirm`` shares no index with ``val``, ``train`` or ``test``."""

    train: torch.Tensor
    calib: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    val_from: str
    confirm: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))


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
    confirm_size: int | None = None,
) -> SplitIndices:
    """Draw the splits from one seeded generator; the same arguments give the same indices.

    ``val_from="train"``: ``val`` is a hold-out of ``val_size`` training images and ``train``
    is the rest. ``val_from="test"``: the test set is halved at random, ``val`` takes up to
    ``val_size`` images of the first half and ``test`` is the second half. ``calib`` is the
    first ``calib_size`` images of the (shuffled) ``train``; ``test_size`` caps ``test`` and
    ``train_size`` caps ``train`` (a seeded subset, e.g. to train from scratch on a CPU).
    Splits are kept in shuffled order, so any prefix is a random sample.

    ``confirm``: images to re-score a study's best configurations on, never used to rank,
    calibrate, report or train. ``val_from="test"``: the images of the validation half that
    ``val`` does not take (the first ``confirm_size`` of them; None: all). ``val_from="train"``:
    ``confirm_size`` training images held out *before* ``train`` is drawn, so a network trained
    on ``train`` never saw them (None: none held out, ``train`` as without confirmation).
    """
    gen = torch.Generator().manual_seed(seed)
    perm_train = torch.randperm(n_train, generator=gen)
    perm_test = torch.randperm(n_test, generator=gen)
    if val_from == "train":
        held = confirm_size or 0
        if val_size + held >= n_train:
            what = (f"data.val_size {val_size} and search.confirm.images {held} leave" if held
                    else f"data.val_size {val_size} leaves")
            raise DataError(f"{what} no training images (the training set has {n_train})")
        val, train, test = perm_train[:val_size], perm_train[val_size + held:], perm_test
        confirm = perm_train[val_size : val_size + held]
    elif val_from == "test":
        half = n_test // 2
        val, train, test = perm_test[: min(val_size, half)], perm_train, perm_test[half:]
        confirm = _rest_of_half(perm_test[:half], val.numel(), confirm_size)
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
    return SplitIndices(train, train[:calib_size], val, test, val_from, confirm)


def _rest_of_half(half: torch.Tensor, used: int, size: int | None) -> torch.Tensor:
    """The images of the validation half after the first ``used`` (the first ``size``)."""
    rest = half[used:]
    if size is not None and size > rest.numel():
        raise DataError(
            f"search.confirm.images {size} exceeds the {rest.numel()} images of the validation "
            f"half ({half.numel()} test images) that data.val_size {used} leaves unused; lower "
            "it, leave it out (all of them) or lower data.val_size"
        )
    return rest if size is None else rest[:size]
