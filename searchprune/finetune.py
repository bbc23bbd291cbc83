"""Finishing a search (paper protocol): fine-tune the top-K configurations, pick the best on
validation, fine-tune it longer, report test accuracy only at the end.

Plain torch; the study side (which trials, where results go) lives in
:mod:`searchprune.search.finishing`. Under ``torchrun --nproc_per_node K`` every rank runs this
same code: training is data parallel (see :mod:`searchprune.train`), evaluation is repeated on
every rank (identical weights, identical results) and only rank 0 writes files (and locks).

Checkpoints are keyed by everything that defines a run (see :func:`run_meta`): the study's
identity, the unpruned weights, the candidate's widths (and kept channels), the recipe (with
distillation's settings when it is on) and the number of ranks. A checkpoint written for
anything else is never resumed; each is locked (``flock``) while it trains, and a second
process asking for the same run is refused in one line rather than left waiting for hours:
once the first ends, rerunning reuses its checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import glob
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from searchprune.config import DistillConfig
from searchprune.data._cache import atomic_save
from searchprune.distill import Distiller, frozen_teacher
from searchprune.errors import SearchpruneError
from searchprune.evaluate import evaluate
from searchprune.train import TrainConfig, distributed_world, fit, is_main_process

__all__ = ["Candidate", "FinetuneResult", "FinetuneSettings", "distill_record",
           "finetune_candidates", "finetune_each", "run_meta"]

META_VERSION = 1  # bump when what a checkpoint holds, or how it is trained, changes

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
    ``final_epochs`` for the best one; standard augmentation (crop + flip). ``distill``
    (``alpha`` > 0): the unpruned network teaches every candidate (:mod:`searchprune.distill`);
    None or ``alpha`` 0: labels only."""

    final_epochs: int = 50
    distill: DistillConfig | None = None

    @property
    def distilling(self) -> bool:
        return self.distill is not None and self.distill.alpha > 0.0


def distill_record(settings: FinetuneSettings) -> dict[str, float] | None:
    """The distillation settings as recorded with results (None: labels only)."""
    if not settings.distilling or settings.distill is None:
        return None
    return dataclasses.asdict(settings.distill)


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
                        out_dir: str | Path, *, progress: bool = False,
                        study: Mapping[str, Any] | None = None) -> FinetuneResult:
    """Rebuild each candidate (same criterion, same reconstruction), fine-tune it
    ``settings.epochs`` epochs, then the best on validation ``settings.final_epochs`` more.

    Every epoch is checkpointed under ``out_dir``; calling again after a kill resumes, with the
    same ``study`` identity (see :func:`run_meta`) and recipe only.

    Raises:
        SearchpruneError: another process is fine-tuning one of these candidates with this
            recipe (nothing is trained).
    """
    out, train_set = _prepare(engine, candidates, out_dir)
    data, device = engine.data, engine.device
    base = _base_meta(engine, study)
    runs = {c.key: _run(out, f"trial-{c.key}-stage1", _label(c.key, study),
                        run_meta(base, c, settings, "stage1")) for c in candidates}
    loss = _distiller(engine, settings, settings.epochs + settings.final_epochs)
    result = FinetuneResult()
    models: dict[int, nn.Module] = {}
    with contextlib.ExitStack() as held:
        if settings.epochs > 0:  # all locks first: a refusal comes before any training
            for run in runs.values():
                held.enter_context(_exclusive(run))
        for cand in candidates:
            model = engine.build(cand.widths)
            before, _ = evaluate(model, data.val.images, data.val.y, device=device)
            if settings.epochs > 0:
                _fit(model, train_set, settings, settings.epochs, runs[cand.key], device,
                     progress, loss)
            val1, val5 = evaluate(model, data.val.images, data.val.y, device=device)
            result.candidates[cand.key] = {"val_top1_before": before, "val_top1": val1,
                                           "val_top5": val5, "epochs": settings.epochs}
            models[cand.key] = model.cpu()
            _log.info("trial %s: val top-1 %.2f -> %.2f after %d epochs", cand.key, before,
                      val1, settings.epochs)
    best = _rank0_pick(max(result.candidates, key=lambda k: result.candidates[k]["val_top1"]))
    widths = next(c.widths for c in candidates if c.key == best)
    untuned = engine.build(widths)
    result.test_top1_before, result.test_top5_before = evaluate(
        untuned, data.test.images, data.test.y, device=device)
    model = models[best]
    final_meta = {"stage": "stage2", "after": runs[best].meta, "epochs": settings.final_epochs}
    stage2 = _run(out, f"trial-{best}-stage2", _label(best, study), final_meta)
    if settings.final_epochs > 0:
        with _exclusive(stage2):
            _fit(model, train_set, settings, settings.final_epochs, stage2, device, progress,
                 loss)
    result.best = best
    result.val_top1, _ = evaluate(model, data.val.images, data.val.y, device=device)
    result.test_top1, result.test_top5 = evaluate(model, data.test.images, data.test.y,
                                                  device=device)
    final = out / f"trial-{best}-final-{_digest(final_meta)}.pt"
    if is_main_process():  # under torchrun every rank holds the same weights; one writes
        atomic_save({"state_dict": model.state_dict(), "widths": dict(widths), "trial": best},
                    final)
    result.checkpoint = str(final)
    return result


def finetune_each(engine, candidates: Sequence[Candidate], settings: FinetuneSettings,
                  out_dir: str | Path, *, latency_batch: int | None = 64,
                  latency_threads: int | None = None,
                  predict_latency: Callable[[Mapping[str, int]], float] | None = None,
                  progress: bool = False,
                  study: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Fine-tune every candidate with the same recipe (``settings.epochs`` epochs, same images
    and seed) and report them side by side: validation and test top-1 before and after, FLOPs
    and params ratios, (unless ``latency_batch`` is None) CPU latency of the fine-tuned net
    (``latency_ms``; ``latency_ratio``: to the unpruned net's, both measured on
    ``latency_threads`` threads) and, with ``predict_latency`` (the study's latency table),
    the predicted ratio (``latency_ratio_predicted``).

    Each candidate's training is checkpointed under ``out_dir``; calling again resumes (same
    ``study`` identity and recipe only) and another process training the same candidate with
    the same recipe is refused, as in :func:`finetune_candidates`.
    """
    from searchprune.export import measure_latency

    out, train_set = _prepare(engine, candidates, out_dir)
    data, device = engine.data, engine.device
    base_meta = _base_meta(engine, study)
    runs = [_run(out, f"{c.key}-each", _label(c.key, study),
                 run_meta(base_meta, c, settings, "each")) for c in candidates]
    loss = _distiller(engine, settings, settings.epochs)
    base = engine.base_cost
    shape = (1, *data.input_shape)
    with contextlib.ExitStack() as held:
        if settings.epochs > 0:
            for run in runs:
                held.enter_context(_exclusive(run))
        base_ms = (measure_latency(engine.model.cpu().eval(), shape, latency_batch,
                                   threads=latency_threads) if latency_batch else None)
        engine.model.to(device)
        rows = []
        for i, (cand, run) in enumerate(zip(candidates, runs), 1):
            model = engine.build(cand.widths, keep=cand.keep)
            before, _ = evaluate(model, data.val.images, data.val.y, device=device)
            if progress:
                _log.info("[%d/%d] fine-tuning %s", i, len(candidates), cand.key)
            if settings.epochs > 0:
                _fit(model, train_set, settings, settings.epochs, run, device, progress, loss)
            val1, _ = evaluate(model, data.val.images, data.val.y, device=device)
            test1, test5 = evaluate(model, data.test.images, data.test.y, device=device)
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
                row.update(latency_ms=ms, latency_ratio=ms / base_ms,
                           latency_batch=latency_batch)
            rows.append(row)
    return rows


# -- what defines a run, and its checkpoint -------------------------------------------------
@dataclass(frozen=True)
class _Run:
    """One training run of one candidate: its checkpoint, its name in messages, its meta."""

    path: Path
    label: str
    meta: dict[str, Any]
    prefix: str  # shared by the checkpoints of this candidate and stage, whatever the meta


def run_meta(base: Mapping[str, Any], cand: Candidate, settings: FinetuneSettings,
             stage: str) -> dict[str, Any]:
    """What defines one candidate's fine-tuning: ``base`` (:func:`_base_meta`: version, study
    identity, the unpruned weights, ranks), the candidate (key, widths, kept channels) and the
    recipe (every :class:`FinetuneSettings` field that stage uses; ``distill`` only when it is
    on). Plain JSON values."""
    recipe = dataclasses.asdict(settings)
    recipe.pop("final_epochs")  # stage 2's own epochs are in its meta
    recipe["distill"] = distill_record(settings)
    if recipe["distill"] is None:  # labels only: the key of a run from before distillation
        recipe.pop("distill")
    return {**base, "stage": stage, "recipe": recipe, "candidate": {
        "key": cand.key, "widths": {k: int(v) for k, v in sorted(cand.widths.items())},
        "keep": _tensors_digest(cand.keep) if cand.keep is not None else None}}


def _base_meta(engine, study: Mapping[str, Any] | None) -> dict[str, Any]:
    return {"version": META_VERSION, "study": dict(study) if study is not None else None,
            "base_weights": _tensors_digest(engine.model.state_dict()),
            "world_size": distributed_world()[1]}


def _tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{t.numel()};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _digest(meta: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _label(key: int | str, study: Mapping[str, Any] | None) -> str:
    what = f"trial {key}" if isinstance(key, int) else f"baseline {key}"
    name = (study or {}).get("name")
    return f"{what} of study '{name}'" if name else what


def _run(out: Path, prefix: str, label: str, meta: dict[str, Any]) -> _Run:
    """The run whose checkpoint is ``<prefix>-<digest of meta>.pt`` in ``out``."""
    return _Run(out / f"{prefix}-{_digest(meta)}.pt", label, meta, prefix)


def _note_stale(run: _Run) -> None:
    """A log line naming the other checkpoints of the same candidate and stage (another
    recipe, other widths, another study) when this run has none to resume."""
    if run.path.exists():
        return
    others = sorted(p.name for p in run.path.parent.glob(glob.escape(run.prefix) + "*.pt"))
    if others:
        _log.info("%s: not resuming %s (written for another recipe, other widths or another "
                  "study); starting fresh in %s", run.label, ", ".join(others), run.path.name)


@contextlib.contextmanager
def _exclusive(run: _Run) -> Iterator[None]:
    """Hold ``<checkpoint>.lock`` (``flock``, not waiting) while the run trains; another holder
    is one error line. Under torchrun rank 0, the writer, locks for all ranks."""
    if not is_main_process():
        yield
        return
    lock = run.path.with_suffix(".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SearchpruneError(
                f"{run.label} is being fine-tuned with this recipe by another process (it "
                f"holds {lock}); wait for it to finish, then rerun to reuse its checkpoint"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _prepare(engine, candidates: Sequence[Candidate], out_dir: str | Path):
    """The output folder (created) and the augmented training set every candidate shares."""
    if not candidates:
        raise ValueError("no candidates to fine-tune")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out, engine.data.train_set(augment=True)


def _distiller(engine, settings: FinetuneSettings, epochs: int) -> Distiller | None:
    """The distillation loss, its teacher a frozen copy of the unpruned network made once for
    all candidates; None when fine-tuning on labels only (or not training at all)."""
    if not settings.distilling or epochs <= 0:
        return None
    return Distiller(frozen_teacher(engine), settings.distill)  # type: ignore[arg-type]


def _fit(model, train_set, s: FinetuneSettings, epochs, run: _Run, device, progress,
         loss: Distiller | None = None) -> None:
    _note_stale(run)
    fit(model, train_set, **s.with_(epochs=epochs).fit_kwargs(), device=device,
        progress=progress, checkpoint_path=run.path, checkpoint_meta=run.meta,
        loss_fn=loss, loss_parts=loss.parts if loss is not None else None)


def _rank0_pick(key: int) -> int:
    """Under torchrun, rank 0's pick for every rank. Each rank scores the candidates with its
    own BatchNorm running statistics (DDP syncs weights, not the last step's statistics), so
    near-ties can fall differently per rank, and ranks that went on with different networks
    would fail in DDP."""
    _, world = distributed_world()
    if world == 1:
        return key
    import torch.distributed as dist

    box = torch.tensor([key], dtype=torch.long)
    dist.broadcast(box, src=0)
    return int(box.item())
