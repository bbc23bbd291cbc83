"""Setting 2, pruning from scratch: a slimmable supernet over the same channel groups as the
pretrained setting, trained with full + random sub-networks and in-place distillation, whose
sub-networks are extracted, BN-recalibrated and evaluated by :class:`SupernetEngine`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from searchprune.bn import bn_layers, recalibrate_bn
from searchprune.supernet._engine import SupernetEngine, calibration_images, check_supernet_config
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
    train_supernet,
)
from searchprune.supernet._widths import (
    WidthChoices,
    allowed_widths,
    make_divisible,
    sample_configs,
)

if TYPE_CHECKING:
    from searchprune.config import Config
    from searchprune.engine import PruningEngine

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
    "check_supernet_config",
    "default_checkpoint",
    "engine_for",
    "first_k_keep",
    "make_divisible",
    "rank_candidates",
    "recalibrate_bn",
    "sample_configs",
    "sample_in_band",
    "scratch_subnet",
    "soft_cross_entropy",
    "train_supernet",
    "train_top_k",
]


def engine_for(cfg: Config, *, progress: bool = False) -> SupernetEngine | PruningEngine:
    """The engine the study runner needs: :class:`SupernetEngine` for ``setting: scratch``,
    else :class:`~searchprune.engine.PruningEngine`."""
    if cfg.setting == "scratch":
        return SupernetEngine.from_config(cfg, progress=progress)
    from searchprune.engine import PruningEngine

    return PruningEngine.from_config(cfg, progress=progress)
