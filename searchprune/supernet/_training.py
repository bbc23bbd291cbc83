"""Training the supernet from scratch with :func:`searchprune.train.fit` and a multi-network loss.

Per mini-batch (paper Sec. 5, US-Nets in-place distillation, docs/algorithms.md §5):
the full network takes cross-entropy with the labels; each sampled sub-network takes the soft
cross-entropy against the full network's softmax, detached, without temperature. The losses are
summed (not averaged), so one backward pass and one optimizer step give the summed gradients.

BatchNorm during training: every network normalises with its own batch statistics (train
mode), which is exact for any width because BN statistics are per channel. Running statistics
are only meaningful for one width, so only the full network updates them (the sub-network
passes run with BN momentum 0); the per-epoch validation figure is the full network's. Every
sub-network is BN-recalibrated before it is evaluated (:func:`recalibrate_bn`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from searchprune.bn import bn_layers
from searchprune.space import SearchSpace
from searchprune.supernet._masking import MaskedSupernet
from searchprune.supernet._widths import WidthChoices, sample_configs
from searchprune.train import TrainConfig

if TYPE_CHECKING:
    from searchprune.config import Config, SupernetConfig
    from searchprune.data import DataBundle

__all__ = [
    "SupernetLoss",
    "SupernetRun",
    "build_scratch_model",
    "default_checkpoint",
    "soft_cross_entropy",
    "supernet_train_config",
    "train_supernet",
]

_log = logging.getLogger(__name__)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``-(1/B) sum_b sum_k target_bk log softmax(logits)_bk`` (``target`` rows are
    probabilities; the caller detaches them)."""
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


class SupernetLoss:
    """The ``loss_fn`` of :func:`~searchprune.train.fit` for supernet training.

    Args:
        supernet: the masked model (``fit`` must be given ``supernet.model``).
        choices: the allowed widths per group.
        num_random: sampled sub-networks per step besides the full one.
        sandwich: US-Nets rule (full + smallest + ``num_random - 1`` random) instead of the
            paper's full + ``num_random`` random.
        inplace_distill: sub-networks learn from the full network's detached softmax; off, they
            use the labels.
        generator: sampling RNG; ``None`` uses torch's global one, which ``fit`` seeds per epoch
            (so a resumed run samples what the uninterrupted one would have).
    """

    def __init__(self, supernet: MaskedSupernet, choices: WidthChoices, *, num_random: int = 3,
                 sandwich: bool = False, inplace_distill: bool = True,
                 generator: torch.Generator | None = None) -> None:
        self.supernet = supernet
        self.choices = choices
        self.num_random = num_random
        self.sandwich = sandwich
        self.inplace_distill = inplace_distill
        self.generator = generator
        self.last: dict[str, float] = {}
        self.last_configs: list[dict[str, int]] = []

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        configs = sample_configs(self.choices, self.num_random, self.sandwich, self.generator)
        self.last_configs = configs
        try:
            self.supernet.set_widths(configs[0])
            logits = model(x)
            full = F.cross_entropy(logits, y)
            teacher = F.softmax(logits.detach(), dim=1)
            subs = []
            with _frozen_running_stats(model):
                for widths in configs[1:]:
                    self.supernet.set_widths(widths)
                    out = model(x)
                    subs.append(soft_cross_entropy(out, teacher) if self.inplace_distill
                                else F.cross_entropy(out, y))
        finally:
            self.supernet.set_widths(None)
        self.last = {"full": full.item()}
        if subs:
            self.last["sub"] = float(torch.stack([s.detach() for s in subs]).mean())
        return full + sum(subs) if subs else full

    def parts(self) -> dict[str, float]:
        """The last step's full-network loss and mean sub-network loss (for the progress bar)."""
        return dict(self.last)


class _frozen_running_stats:
    """BN layers keep normalising with batch statistics but stop updating running ones."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = bn_layers(model)
        self.momenta: list[float | None] = []

    def __enter__(self) -> None:
        self.momenta = [bn.momentum for bn in self.layers]
        for bn in self.layers:
            bn.momentum = 0.0

    def __exit__(self, *exc: object) -> None:
        for bn, m in zip(self.layers, self.momenta):
            bn.momentum = m


def default_checkpoint(cfg: Config) -> Path:
    """``cfg.supernet.checkpoint``, else ``runs/supernet/<config stem>/supernet.pt``."""
    if cfg.supernet.checkpoint:
        return Path(cfg.supernet.checkpoint).expanduser()
    stem = Path(cfg.source).stem if cfg.source else "searchprune"
    return Path("runs") / "supernet" / stem / "supernet.pt"


def build_scratch_model(cfg: Config, data: DataBundle, seed: int | None = None) -> nn.Module:
    """The configured architecture with a fresh random initialisation (seeded; never loads
    ``model.checkpoint`` or pretrained weights)."""
    from searchprune.models import build_model

    if cfg.model.checkpoint or cfg.model.pretrained:
        _log.warning("setting 'scratch' ignores model.checkpoint/model.pretrained: random init")
    model_cfg = dataclasses.replace(cfg.model, checkpoint=None, pretrained=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.supernet.seed if seed is None else seed)
        return build_model(model_cfg, num_classes=data.num_classes,
                           in_channels=data.input_shape[0], input_shape=data.input_shape)


def build_space(cfg: Config, model: nn.Module, data: DataBundle) -> SearchSpace:
    """The same channel groups (and FLOPs model) as the pretrained setting."""
    return SearchSpace.from_model(model, data.calib.head(1), round_to=cfg.pruning.round_to,
                                  prune_classifier_input=cfg.pruning.prune_classifier_input)


def supernet_train_config(s: SupernetConfig, *, seed: int | None = None,
                          epochs: int | None = None) -> TrainConfig:
    """The ``supernet`` section's training hyper-parameters (``lr``, ``weight_decay``,
    ``batch_size``, ``seed``; ``retrain_epochs`` unless ``epochs`` says otherwise) as a
    :class:`~searchprune.train.TrainConfig`: supernet training, top-k fine-tuning and
    retraining all use it."""
    return TrainConfig(epochs=s.retrain_epochs if epochs is None else epochs, lr=s.lr,
                       weight_decay=s.weight_decay, batch_size=s.batch_size,
                       seed=s.seed if seed is None else seed)


@dataclass
class SupernetRun:
    """A finished (or resumed-and-finished) supernet training."""

    checkpoint: Path
    records: list[dict[str, Any]]
    epochs: int
    model: nn.Module
    space: SearchSpace
    choices: WidthChoices


def train_supernet(cfg: Config, *, data: DataBundle | None = None, epochs: int | None = None,
                   checkpoint: str | Path | None = None, progress: bool = False,
                   on_epoch: Callable[[dict[str, Any]], bool | None] | None = None
                   ) -> SupernetRun:
    """Train (or continue training) the supernet of ``cfg`` from scratch.

    The checkpoint (``fit``'s: model, optimizer, scheduler, epoch, records) is written after
    every epoch; running again continues after the last finished epoch. A JSON sidecar
    (``supernet.json``) records the settings and per-epoch figures. ``on_epoch(record)``
    returning True stops after that epoch (as ``fit``'s).

    The cosine learning-rate schedule is fixed by the ``epochs`` of the first run; resuming
    with another ``epochs`` continues that schedule (a warning says so).
    """
    from searchprune.config import validate_supernet
    from searchprune.data import load_data
    from searchprune.engine import resolve_device
    from searchprune.train import fit

    validate_supernet(cfg.supernet)
    s = cfg.supernet
    epochs = s.epochs if epochs is None else epochs
    data = load_data(cfg.data) if data is None else data
    path = Path(checkpoint).expanduser() if checkpoint is not None else default_checkpoint(cfg)
    _warn_on_changed_schedule(path, epochs)
    model = build_scratch_model(cfg, data)
    space = build_space(cfg, model, data)
    choices = WidthChoices.from_groups(space.prunable, s.min_ratio, s.width_multiple)
    supernet = MaskedSupernet(model, space)
    loss = SupernetLoss(supernet, choices, num_random=s.num_random, sandwich=s.sandwich,
                        inplace_distill=s.inplace_distill)
    try:
        records = fit(model, data.train_set(augment=True),
                      **supernet_train_config(s, epochs=epochs).fit_kwargs(),
                      device=resolve_device(cfg.device), val=data.val, progress=progress,
                      checkpoint_path=path, loss_fn=loss, loss_parts=loss.parts,
                      on_epoch=on_epoch)
    finally:
        supernet.remove()
    _write_sidecar(path, cfg, epochs, records, choices)
    return SupernetRun(path, records, epochs, model.cpu().eval(), space, choices)


def _warn_on_changed_schedule(path: Path, epochs: int) -> None:
    side = path.with_suffix(".json")
    if not path.is_file() or not side.is_file():
        return
    try:
        planned = json.loads(side.read_text()).get("epochs")
    except ValueError:
        return
    if isinstance(planned, int) and planned != epochs:
        _log.warning("%s was started for %d epochs; its cosine learning-rate schedule keeps that "
                     "length while training to %d (delete it to start over)", path, planned,
                     epochs)


def _write_sidecar(path: Path, cfg: Config, epochs: int, records: list[dict[str, Any]],
                   choices: WidthChoices) -> None:
    from searchprune.config import config_to_dict

    meta = {"epochs": epochs, "epochs_done": records[-1]["epoch"] if records else 0,
            "model": cfg.model.name, "data": cfg.data.name,
            "supernet": config_to_dict(cfg)["supernet"], "records": records,
            "widths": {k: list(v) for k, v in choices.choices.items()}}
    side = path.with_suffix(".json")
    tmp = side.with_name(f".{side.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(meta, indent=2, default=str))
    os.replace(tmp, side)

