"""Confirmation: re-score a study's top-k trials on images ranking never used, pick by that.

The best of many candidates ranked on the same validation images is partly the luckiest (the
winner's curse). :func:`confirm_study` re-evaluates the ``top_k`` trials by validation top-1
(:func:`~searchprune.search.trials.best_trials`) on the engine's confirmation split (see
:mod:`searchprune.confirmation` for which images those are), and :func:`ranked_trials` puts the
confirmed trials first, best on confirmation first: ``study show``, ``finetune``, ``export`` and
the comparison reports choose and rank with it.

Optuna refuses to change a finished trial, so the results are one study user attr,
``confirm``: ``{"top_k", "images_requested", "images", "source", "trials": {number:
{"confirm_top1", "confirm_top5", "confirm_images", "val_top1"}}}``. Each trial is confirmed
under the study lock (read what is done, evaluate one trial, write it back), so parallel workers
never confirm the same trial twice and a re-run confirms only the trials still missing. A new
``images`` request starts the record afresh (confirmations on other images are not comparable).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial

from searchprune.confirmation import ConfirmSpec, confirm_source
from searchprune.search.budget import Lock, study_lock
from searchprune.search.trials import best_trials, is_multi_objective, top1

if TYPE_CHECKING:
    from searchprune.search._interrupt import InterruptGuard
    from searchprune.search.problem import Problem

__all__ = ["CONFIRM_ATTR", "Confirmation", "confirm_study", "confirmations", "pending",
           "ranked_trials"]

CONFIRM_ATTR = "confirm"


@dataclass(frozen=True)
class Confirmation:
    """One trial's confirmation: top-1/top-5 (percent, None when not finite) on ``images``
    confirmation images, and its validation top-1."""

    number: int
    top1: float | None
    top5: float | None
    images: int
    val_top1: float | None


def _record(study: optuna.Study) -> dict[str, Any]:
    record = study.user_attrs.get(CONFIRM_ATTR)
    return dict(record) if isinstance(record, dict) else {}


def confirmations(study: optuna.Study) -> dict[int, Confirmation]:
    """The study's confirmed trials (on the images of its latest confirmation), by number."""
    record = _record(study)
    images = record.get("images")
    out: dict[int, Confirmation] = {}
    for key, entry in (record.get("trials") or {}).items():
        if not isinstance(entry, dict) or entry.get("confirm_images") != images:
            continue
        out[int(key)] = Confirmation(int(key), _number(entry.get("confirm_top1")),
                                     _number(entry.get("confirm_top5")),
                                     int(entry.get("confirm_images") or 0),
                                     _number(entry.get("val_top1")))
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def ranked_trials(study: optuna.Study, *, flops_min: float | None = None,
                  flops_max: float | None = None) -> list[FrozenTrial]:
    """:func:`best_trials` with the confirmed trials first, best on confirmation first (ties:
    better on validation, then lower number); a study without confirmation (or a Pareto study)
    keeps the validation order."""
    done = best_trials(study, flops_min=flops_min, flops_max=flops_max)
    if is_multi_objective(study):
        return done
    confirmed = confirmations(study)
    if not confirmed:
        return done
    first = [t for t in done if t.number in confirmed]
    first.sort(key=lambda t: (-_or_low(confirmed[t.number].top1), -_or_low(top1(t)), t.number))
    return first + [t for t in done if t.number not in confirmed]


def _or_low(value: float | None) -> float:
    return -math.inf if value is None else value


def _matches(record: dict[str, Any], spec: ConfirmSpec) -> bool:
    """Whether ``record`` was made for the same images as ``spec`` asks for."""
    return bool(record) and record.get("images_requested") == spec.images


def pending(study: optuna.Study, spec: ConfirmSpec) -> list[FrozenTrial]:
    """The top ``spec.top_k`` trials by validation top-1 not confirmed yet (on ``spec``'s
    images), best first; nothing for a Pareto study."""
    if is_multi_objective(study):
        return []
    record = _record(study)
    done = set(record.get("trials") or {}) if _matches(record, spec) else set()
    return [t for t in best_trials(study)[: spec.top_k] if str(t.number) not in done]


def confirm_study(study: optuna.Study, problem: Problem, *, spec: ConfirmSpec | None = None,
                  lock: Lock | None = None, guard: InterruptGuard | None = None,
                  ) -> list[Confirmation]:
    """Confirm the top-k trials of ``study`` not confirmed yet on the problem's engine
    (``spec``: default the problem's ``search.confirm``); returns the new confirmations.

    One trial at a time, under the study ``lock`` (default :func:`study_lock` of the study's
    storage), so workers sharing the study split the work; with ``guard`` a signal abandons
    the evaluation in flight (nothing half-written is stored)."""
    spec = spec if spec is not None else problem.goal.confirm
    if spec is None:
        raise ValueError("confirm_study needs a ConfirmSpec (search.confirm)")
    if lock is None:
        lock = study_lock(study._storage, study.study_name)
    engine, cfg = problem.engine, problem.cfg
    new: list[Confirmation] = []
    while True:
        if guard is not None:
            guard.check()
        with lock():
            record = _record(study)
            if not _matches(record, spec):
                record = {"images_requested": spec.images, "trials": {}}
            record.update(top_k=spec.top_k, source=confirm_source(cfg))
            trials = dict(record.get("trials") or {})
            todo = [t for t in best_trials(study)[: spec.top_k] if str(t.number) not in trials]
            if not todo:
                if record != _record(study):
                    study.set_user_attr(CONFIRM_ATTR, record)
                return new
            trial = todo[0]
            with _raising(guard):
                result = engine.evaluate(trial.user_attrs["widths"], split="confirm")
            done = Confirmation(trial.number, _number(result.top1), _number(result.top5),
                                int(result.images), top1(trial))
            trials[str(trial.number)] = {
                "confirm_top1": done.top1, "confirm_top5": done.top5,
                "confirm_images": done.images, "val_top1": done.val_top1}
            record.update(trials=trials, images=done.images)
            study.set_user_attr(CONFIRM_ATTR, record)
            new.append(done)


@contextlib.contextmanager
def _raising(guard: InterruptGuard | None) -> Iterator[None]:
    if guard is None:
        yield
    else:
        with guard.raising():
            yield

