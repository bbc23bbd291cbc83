"""Setting 2, pruning from scratch: a slimmable supernet over the same channel groups as the
pretrained setting, trained with full + random sub-networks and in-place distillation, whose
sub-networks are extracted, BN-recalibrated and evaluated by :class:`SupernetEngine` (the engine
of ``setting: scratch`` in :func:`searchprune.engine.engine_for`).
"""

from __future__ import annotations

from searchprune.bn import bn_layers, recalibrate_bn
from searchprune.supernet._engine import SupernetEngine, calibration_images
from searchprune.supernet._masking import MaskedSupernet, first_k_keep
from searchprune.supernet._topk import (
    Ranked,
    TopKResult,
    rank_candidates,
    sample_in_band,
    scratch_subnet,
    train_top_k,
)
from searchprune.supernet._training import (
    SupernetLoss,
    SupernetRun,
    build_scratch_model,
    build_space,
    default_checkpoint,
    soft_cross_entropy,
    supernet_train_config,
    train_supernet,
)
from searchprune.supernet._widths import (
    WidthChoices,
    allowed_widths,
    make_divisible,
    sample_configs,
)

__all__ = [
    "MaskedSupernet",
    "Ranked",
    "SupernetEngine",
    "SupernetLoss",
    "SupernetRun",
    "TopKResult",
    "WidthChoices",
    "allowed_widths",
    "bn_layers",
    "build_scratch_model",
    "build_space",
    "calibration_images",
    "default_checkpoint",
    "first_k_keep",
    "make_divisible",
    "rank_candidates",
    "recalibrate_bn",
    "sample_configs",
    "sample_in_band",
    "scratch_subnet",
    "soft_cross_entropy",
    "supernet_train_config",
    "train_supernet",
    "train_top_k",
]

