"""The study runner's engine for setting 2: evaluate sub-networks of a trained supernet.

Per trial: extract the first-k channels of every group (``prune_model``), recalibrate BN on
``supernet.bn_calib_images`` training images, measure accuracy. No least squares. The interface
is :class:`~searchprune.engine.Engine`, so the study runner, the FLOPs gate and the band are
shared.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from searchprune.bn import recalibrate_bn
from searchprune.config import Config, validate_supernet
from searchprune.engine import EvalResult, SearchSpaceView, resolve_device
from searchprune.errors import CheckpointError
from searchprune.space import SearchSpace
from searchprune.supernet._masking import MaskedSupernet
from searchprune.supernet._training import build_scratch_model, build_space, default_checkpoint
from searchprune.supernet._widths import WidthChoices

__all__ = ["SupernetEngine", "calibration_images"]

_log = logging.getLogger(__name__)


def calibration_images(data, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` training images (no augmentation), a seeded random sample, stacked in memory."""
    train = data.train_set(augment=False)
    n = min(n, len(train))
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]
    return torch.stack([train[int(i)][0] for i in order])


class SupernetEngine(SearchSpaceView):
    """A trained supernet, its channel groups, allowed widths and BN-calibration images."""

    def __init__(self, cfg: Config, model: nn.Module, data, *,
                 device: torch.device | None = None, space: SearchSpace | None = None) -> None:
        validate_supernet(cfg.supernet)  # configs from load_config are checked already
        self.cfg = cfg
        self.device = device or resolve_device(cfg.device)
        self.model = model.eval()
        self.data = data
        self.seconds: dict[str, float] = {}
        self.space = space or build_space(cfg, self.model, data)
        s = cfg.supernet
        self.choices = WidthChoices.from_groups(self.space.prunable, s.min_ratio,
                                                s.width_multiple)
        self.supernet = MaskedSupernet(self.model, self.space)
        t = time.perf_counter()
        self.calib_images = calibration_images(data, s.bn_calib_images, cfg.data.seed)
        self.seconds["calib_images"] = time.perf_counter() - t

    @classmethod
    def from_config(cls, cfg: Config, *, progress: bool = False) -> SupernetEngine:
        """Load the data and the supernet checkpoint of ``cfg``.

        Raises:
            CheckpointError: no trained supernet (run ``searchprune supernet train CONFIG``).
        """
        from searchprune.data import load_data
        from searchprune.models import load_checkpoint

        path = default_checkpoint(cfg)
        if not path.is_file():
            config = cfg.source or "CONFIG.yaml"
            raise CheckpointError(f"no trained supernet at {path}; run 'searchprune supernet "
                                  f"train {config}' first (or set supernet.checkpoint)")
        from searchprune.confirmation import holdout_images

        data = load_data(cfg.data, confirm_images=holdout_images(cfg))
        model = build_scratch_model(cfg, data)
        load_checkpoint(model, path, name=f"{cfg.model.name} supernet")
        _warn_if_unfinished(path, cfg)
        return cls(cfg, model, data)

    # -- the search space: SearchSpaceView, with widths snapped to the allowed set ------------
    def widths(self, ratios: Mapping[str, float]) -> dict[str, int]:
        """The allowed width nearest to ``ratio * channels`` per group."""
        return self.choices.nearest(ratios)

    @property
    def proxy_images(self) -> int:
        """Images forwarded per evaluation before scoring: the BN recalibration's."""
        return int(self.calib_images.shape[0])

    # -- per trial ----------------------------------------------------------------------------
    def build(self, widths: Mapping[str, int], *, calibrate: bool = True,
              seconds: dict[str, float] | None = None) -> nn.Module:
        """The extracted sub-network (first-k channels), BN-recalibrated unless told not to."""
        seconds = {} if seconds is None else seconds
        t = time.perf_counter()
        sub = self.supernet.extract(widths)
        seconds["build"] = time.perf_counter() - t
        if calibrate:
            t = time.perf_counter()
            recalibrate_bn(sub, self.calib_images, batch_size=self.cfg.data.batch_size,
                           device=self.device)
            seconds["calibrate"] = time.perf_counter() - t
        return sub.to(self.device).eval()

    def evaluate(self, widths: Mapping[str, int], *, split: str = "val",
                 calibrate: bool = True,
                 on_chunk: Callable[[int, float], bool] | None = None) -> EvalResult:
        """Extract, BN-recalibrate and evaluate one configuration (accuracies in percent).

        ``on_chunk(images_seen, top1_so_far)`` may stop the evaluation early (Optuna pruners).
        """
        seconds: dict[str, float] = {}
        widths = {k: int(v) for k, v in widths.items()}
        sub = self.build(widths, calibrate=calibrate, seconds=seconds)
        return self._score(sub, widths, split, on_chunk, seconds)

    def evaluate_baseline(self, split: str = "val") -> tuple[float, float]:
        """The full-width supernet, BN-recalibrated like every sub-network."""
        r = self.evaluate(self.choices.full(), split=split)
        return r.top1, r.top5


def _warn_if_unfinished(path: Path, cfg: Config) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # load_checkpoint reports unreadable files
        return
    done = state.get("epoch") if isinstance(state, dict) else None
    if isinstance(done, int) and done < cfg.supernet.epochs:
        _log.warning("supernet %s is trained for %d of %d epochs; run 'searchprune supernet "
                     "train %s' to finish it", path, done, cfg.supernet.epochs,
                     cfg.source or "CONFIG")
