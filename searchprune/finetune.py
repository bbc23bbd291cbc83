"""Finishing a search (paper protocol): fine-tune the top-K configurations, pick the best on
validation, fine-tune it longer, report test accuracy only at the end.

Plain torch; the study side (which trials, where results go) lives in
:mod:`searchprune.search.finishing`. Under ``torchrun --nproc_per_node K`` every rank runs this
same code: training is data parallel (see :mod:`searchprune.train`), evaluation is repeated on
every rank (identical weights, identical results) and only rank 0 writes files.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from searchprune.data._cache import atomic_save
from searchprune.evaluate import evaluate
from searchprune.train import TrainConfig, fit, is_main_process

__all__ = ["Candidate", "FinetuneResult", "FinetuneSettings", "finetune_candidates",
           "finetune_each"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """A configuration to fine-tune: its key (a trial number, or a baseline's name), widths and,
    for a baseline that chose its own channels, the kept channels per group."""

    key: int | str
    widths: Mapping[str, int]
    keep: Mapping[str, torch.Tensor] | None = None


@dataclass(frozen=True)
class FinetuneSettings(TrainConfig):
    """:class:`~searchprune.train.TrainConfig` (``epochs`` for every candidate) plus
    ``final_epochs`` for the best one; standard augmentation (crop + flip)."""

    final_epochs: int = 50


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
    out, train_set = _prepare(engine, candidates, out_dir)
    data, device = engine.data, engine.device
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
    if is_main_process():  # under torchrun every rank holds the same weights; one writes
        atomic_save({"state_dict": model.state_dict(), "widths": dict(widths), "trial": best},
                    final)
    result.checkpoint = str(final)
    return result


def finetune_each(engine, candidates: Sequence[Candidate], settings: FinetuneSettings,
                  out_dir: str | Path, *, latency_batch: int | None = 64,
                  latency_threads: int | None = None,
                  predict_latency: Callable[[Mapping[str, int]], float] | None = None,
                  progress: bool = False) -> list[dict[str, Any]]:
    """Fine-tune every candidate with the same recipe (``settings.epochs`` epochs, same images
    and seed) and report them side by side: validation and test top-1 before and after, FLOPs
    and params ratios, (unless ``latency_batch`` is None) CPU latency of the fine-tuned net
    (``latency_ms``; ``latency_ratio``: to the unpruned net's, both measured on
    ``latency_threads`` threads) and, with ``predict_latency`` (the study's latency table),
    the predicted ratio (``latency_ratio_predicted``).

    Each candidate's training is checkpointed under ``out_dir``; calling again resumes.
    """
    from searchprune.export import measure_latency

    out, train_set = _prepare(engine, candidates, out_dir)
    data, device = engine.data, engine.device
    base = engine.base_cost
    shape = (1, *data.input_shape)
    base_ms = (measure_latency(engine.model.cpu().eval(), shape, latency_batch,
                               threads=latency_threads) if latency_batch else None)
    engine.model.to(device)
    rows = []
    for i, cand in enumerate(candidates, 1):
        model = engine.build(cand.widths, keep=cand.keep)
        before, _ = evaluate(model, data.val.x, data.val.y, device=device)
        if progress:
            _log.info("[%d/%d] fine-tuning %s", i, len(candidates), cand.key)
        if settings.epochs > 0:
            _fit(model, train_set, settings, settings.epochs, out / f"{cand.key}-each.pt",
                 device, progress)
        val1, _ = evaluate(model, data.val.x, data.val.y, device=device)
        test1, test5 = evaluate(model, data.test.x, data.test.y, device=device)
        cost = engine.cost(cand.widths)
        row: dict[str, Any] = {
            "key": cand.key, "widths": dict(cand.widths), "epochs": settings.epochs,
            "val_top1_before": before, "val_top1": val1, "test_top1": test1,
            "test_top5": test5, "flops_ratio": cost.flops / base.flops,
            "params_ratio": cost.params / base.params,
        }
        if predict_latency is not None:
            row["latency_ratio_predicted"] = float(predict_latency(cand.widths))
        if base_ms is not None:
            ms = measure_latency(model.cpu().eval(), shape, latency_batch,
                                 threads=latency_threads)
            row.update(latency_ms=ms, latency_ratio=ms / base_ms, latency_batch=latency_batch)
        rows.append(row)
    return rows


def _prepare(engine, candidates: Sequence[Candidate], out_dir: str | Path):
    """The output folder (created) and the augmented training set every candidate shares."""
    if not candidates:
        raise ValueError("no candidates to fine-tune")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out, engine.data.train_set(augment=True)


def _fit(model, train_set, s: FinetuneSettings, epochs, ckpt, device, progress) -> None:
    fit(model, train_set, **s.with_(epochs=epochs).fit_kwargs(), device=device,
        progress=progress, checkpoint_path=ckpt)
