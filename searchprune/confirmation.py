"""``search.confirm: {top_k, images}``: where a study's best configurations are re-scored.

Ranking a few thousand candidates on the same validation images inflates the best of them (the
winner's curse): the top trial by validation top-1 is partly the luckiest. Confirmation re-scores
the ``top_k`` trials by validation top-1 on ``images`` other images, and the pick is the best of
them there (:mod:`searchprune.search.confirm`). Those images must be disjoint from validation,
calibration and test, and the network must never have been trained on them:

- ``data.val_from: test`` (a checkpoint trained on the whole official training set): the
  images of the validation half of the test split that ranking did not use
  (``data.val_size`` of the half rank, the rest confirm; ``images``: how many of them, default
  all);
- ``data.val_from: train``: a hold-out of the training images is safe only when the network was
  trained by searchprune on the training images that remain, i.e. the built-in digits baseline
  (``digits_resnet8`` without ``model.checkpoint``): ``images`` (default ``data.val_size``)
  training images are held out *before* the baseline is trained (its cache key covers its
  training images, so it is trained without them). A checkpoint from elsewhere (or a supernet,
  whose checkpoint is not tied to the split) has seen an unknown part of the training images:
  refused in one line.

Plain functions, no torch and no Optuna: the config validates with them and the data loader
reads how many images to hold out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from searchprune._recipes import has_recipe
from searchprune.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    from searchprune.config import Config

__all__ = ["DEFAULT_TOP_K", "ConfirmSpec", "confirm_source", "confirm_spec", "holdout_images",
           "parse_confirm"]

DEFAULT_TOP_K = 5
_KEYS = ("top_k", "images")
_INT_MAX = 2**31 - 1


@dataclass(frozen=True)
class ConfirmSpec:
    """Re-score the ``top_k`` trials by validation top-1 on ``images`` confirmation images
    (None: the default of :func:`holdout_images`)."""

    top_k: int = DEFAULT_TOP_K
    images: int | None = None

    def to_dict(self) -> dict[str, int | None]:
        return {"top_k": self.top_k, "images": self.images}


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _INT_MAX:
        raise ConfigError(f"{where} must be an integer >= 1, got {value!r}")
    return value


def parse_confirm(raw: Any) -> ConfirmSpec | None:
    """The shape of ``search.confirm`` (None: no confirmation; ``{}``: the defaults)."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"search.confirm must be {{top_k: k, images: n}}, got {raw!r}")
    for key in raw:
        if key not in _KEYS:
            raise ConfigError(f"unknown key '{key}' in search.confirm{did_you_mean(str(key), _KEYS)}"
                              "; use top_k or images")
    top_k = _count(raw.get("top_k", DEFAULT_TOP_K), "search.confirm.top_k")
    images = raw.get("images")
    return ConfirmSpec(top_k, None if images is None else _count(images, "search.confirm.images"))


def trained_here(cfg: Config) -> bool:
    """Whether the network to prune is trained by searchprune on this config's training images
    (a built-in model with a recipe and no checkpoint: the digits baseline, the CIFAR
    MobileNetV2), so images held out of them were never trained on."""
    return cfg.setting == "pretrained" and has_recipe(cfg.model)


def confirm_spec(cfg: Config) -> ConfirmSpec | None:
    """``cfg.search.confirm``, checked against the rest of the config (one-line
    :class:`ConfigError`): one objective to rank by, and images the network never saw."""
    spec = parse_confirm(cfg.search.confirm)
    if spec is None:
        return None
    if cfg.search.objective != "single":
        raise ConfigError("search.confirm re-ranks the best trials by one value; use it with "
                          "search.objective: single")
    if cfg.data.val_from == "train" and not trained_here(cfg):
        raise ConfigError(
            "search.confirm needs images the network was never trained on: with data.val_from: "
            "train only a network searchprune trains itself without them (digits_resnet8 or "
            "cifar_mobilenet_v2 without a checkpoint) has such images; set data.val_from: test (the validation "
            "half's images that ranking does not use confirm)")
    return spec


def holdout_images(cfg: Config, spec: ConfirmSpec | None = None) -> int | None:
    """What the data loader holds out for confirmation (``load_data(confirm_images=...)``):
    with ``val_from: test`` how many of the validation half's unused images (None: all), with
    ``val_from: train`` how many training images are held out before training (None without
    confirmation; default ``data.val_size``)."""
    spec = spec if spec is not None else confirm_spec(cfg)
    if cfg.data.val_from == "test":
        return None if spec is None else spec.images
    if spec is None:
        return None
    return spec.images if spec.images is not None else cfg.data.val_size


def confirm_source(cfg: Config) -> str:
    """Where the confirmation images come from, in words."""
    if cfg.data.val_from == "test":
        return "the validation half of the test split, images ranking did not use"
    return "training images held out before the baseline was trained"
