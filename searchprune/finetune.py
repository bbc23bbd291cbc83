"""Finishing a search (paper protocol): fine-tune the top-K configurations, pick the best on
validation, fine-tune it longer, report test accuracy only at the end.

Plain torch; the study side (which trials, where results go) lives in
:mod:`searchprune.search.finishing`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from searchprune.evaluate import evaluate
from searchprune.train import fit

__all__ = ["Candidate", "FinetuneResult", "FinetuneSettings", "finetune_candidates"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """A configuration to fine-tune: its key (e.g. the trial number) and widths."""

    key: int
    widths: Mapping[str, int]


@dataclass(frozen=True)
class FinetuneSettings:
    """SGD with momentum, cosine schedule, standard augmentation (crop + flip)."""

    epochs: int = 5
    final_epochs: int = 50
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 128
    seed: int = 0


@dataclass
class FinetuneResult:
    """Validation accuracy of every candidate and the final model's test accuracy."""

    candidates: dict[int, dict[str, float]] = field(default_factory=dict)
    best: int | None = None
    val_top1: float = 0.0
    test_top1_before: float = 0.0
    test_top5_before: float = 0.0
    test_top1: float = 0.0
    test_top5: float = 0.0
    checkpoint: str = ""


def finetune_candidates(engine, candidates: Sequence[Candidate], settings: FinetuneSettings,
                        out_dir: str | Path, *, progress: bool = False) -> FinetuneResult:
    """Rebuild each candidate (same criterion, same reconstruction), fine-tune it
    ``settings.epochs`` epochs, then the best on validation ``settings.final_epochs`` more.

    Every epoch is checkpointed under ``out_dir``; calling again after a kill resumes.
    """
    if not candidates:
        raise ValueError("no candidates to fine-tune")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data, device = engine.data, engine.device
    train_set = data.train_set(augment=True)
    result = FinetuneResult()
    models: dict[int, nn.Module] = {}
    for cand in candidates:
        model = engine.build(cand.widths)
        before, _ = evaluate(model, data.val.x, data.val.y, device=device)
        if settings.epochs > 0:
            _fit(model, train_set, settings, settings.epochs, out / f"trial-{cand.key}-stage1.pt",
                 device, progress)
        val1, val5 = evaluate(model, data.val.x, data.val.y, device=device)
        result.candidates[cand.key] = {"val_top1_before": before, "val_top1": val1,
                                       "val_top5": val5, "epochs": settings.epochs}
        models[cand.key] = model.cpu()
        _log.info("trial %s: val top-1 %.2f -> %.2f after %d epochs", cand.key, before, val1,
                  settings.epochs)
    best = max(result.candidates, key=lambda k: result.candidates[k]["val_top1"])
    widths = next(c.widths for c in candidates if c.key == best)
    untuned = engine.build(widths)
    result.test_top1_before, result.test_top5_before = evaluate(
        untuned, data.test.x, data.test.y, device=device)
    model = models[best]
    if settings.final_epochs > 0:
        _fit(model, train_set, settings, settings.final_epochs, out / f"trial-{best}-stage2.pt",
             device, progress)
    result.best = best
    result.val_top1, _ = evaluate(model, data.val.x, data.val.y, device=device)
    result.test_top1, result.test_top5 = evaluate(model, data.test.x, data.test.y, device=device)
    final = out / f"trial-{best}-final.pt"
    torch.save({"state_dict": model.state_dict(), "widths": dict(widths), "trial": best}, final)
    result.checkpoint = str(final)
    return result


def _fit(model, train_set, s: FinetuneSettings, epochs, ckpt, device, progress) -> None:
    fit(model, train_set, epochs=epochs, lr=s.lr, momentum=s.momentum,
        weight_decay=s.weight_decay, batch_size=s.batch_size, device=device, seed=s.seed,
        progress=progress, checkpoint_path=ckpt)
