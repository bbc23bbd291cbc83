"""After the search (paper Sec. 5): rank candidates with the supernet, fine-tune the top-k
sub-networks for a few epochs, and retrain the best one from a fresh random initialisation.

All training goes through :func:`searchprune.train.fit`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from searchprune.prune import prune_model
from searchprune.search.band import draws_in_bounds
from searchprune.supernet._masking import first_k_keep
from searchprune.supernet._training import build_scratch_model, supernet_train_config

if TYPE_CHECKING:
    from searchprune.search.problem import Problem
    from searchprune.supernet._engine import SupernetEngine

__all__ = ["Ranked", "TopKResult", "rank_candidates", "sample_in_band", "scratch_subnet",
           "train_top_k"]

_log = logging.getLogger(__name__)


@dataclass
class Ranked:
    """One candidate: its widths, FLOPs ratio and supernet accuracy (after BN recalibration)."""

    widths: dict[str, int]
    flops_ratio: float
    top1: float
    finetuned_top1: float | None = None


@dataclass
class TopKResult:
    """The fine-tuned top-k (best first after fine-tuning) and the retrained winner."""

    candidates: list[Ranked]
    best: dict[str, int]
    retrained_val_top1: float
    retrained_test_top1: float
    retrain_records: list[dict[str, Any]] = field(default_factory=list)


def sample_in_band(engine: SupernetEngine, n: int, *, seed: int = 0,
                   max_draws: int = 200_000, problem: Problem | None = None
                   ) -> list[dict[str, int]]:
    """``n`` distinct configurations inside the FLOPs band of ``problem`` (default: resolved
    from ``engine.cfg``): keep-ratios uniform on each group's range (``[eta, 1]``, or its
    ``pruning.groups`` range) conditioned on the band (:func:`draw_in_band`, as the random
    sampler draws them), mapped to allowed widths; repeats are skipped."""
    if problem is None:
        from searchprune.search.problem import resolve_problem

        problem = resolve_problem(engine.cfg, engine)
    band = problem.goal.require_band("supernet rank")
    drawn = draws_in_bounds(np.random.default_rng(seed), problem.ranges.bounds,
                            lambda r: band.contains_ratios(engine, r), n, max_draws=max_draws,
                            key=lambda r: tuple(engine.widths(r).values()))
    return [engine.widths(r) for r in drawn]


def rank_candidates(engine: SupernetEngine, candidates: Sequence[Mapping[str, int]],
                    split: str = "val") -> list[Ranked]:
    """Evaluate every candidate through the supernet (extract + BN recalibration), best first."""
    ranked = []
    for widths in candidates:
        r = engine.evaluate(widths, split=split)
        ranked.append(Ranked(dict(r.widths), engine.flops_ratio(widths), r.top1))
    return sorted(ranked, key=lambda c: -c.top1)


def scratch_subnet(engine: SupernetEngine, widths: Mapping[str, int], seed: int) -> nn.Module:
    """The architecture at ``widths`` with a fresh random initialisation: the first-k channels
    of a newly initialised full network."""
    fresh = build_scratch_model(engine.cfg, engine.data, seed=seed)
    return prune_model(fresh, engine.space, first_k_keep(engine.space, widths))


def train_top_k(engine: SupernetEngine, ranked: Sequence[Mapping[str, int] | Ranked], *,
                k: int | None = None, finetune_epochs: int | None = None,
                retrain_epochs: int | None = None, finetune_lr: float | None = None,
                seed: int | None = None, progress: bool = False) -> TopKResult:
    """Fine-tune the first ``k`` of ``ranked`` (best first) from the supernet weights, pick the
    best by validation accuracy, retrain it from a fresh random init, report val and test.

    Defaults come from ``engine.cfg.supernet`` (``top_k``, ``finetune_epochs``,
    ``retrain_epochs``, ``seed``); fine-tuning uses a tenth of ``supernet.lr``.
    """
    from searchprune.train import accuracy, fit

    s, data = engine.cfg.supernet, engine.data
    k = s.top_k if k is None else k
    retrain = supernet_train_config(s, seed=seed, epochs=retrain_epochs)
    tune = retrain.with_(epochs=s.finetune_epochs if finetune_epochs is None else finetune_epochs,
                         lr=s.lr / 10 if finetune_lr is None else finetune_lr)
    common = {"device": engine.device, "val": data.val, "progress": progress}
    tuned: list[Ranked] = []
    for item in list(ranked)[:k]:
        cand = item if isinstance(item, Ranked) else Ranked(
            dict(item), engine.flops_ratio(item), float("nan"))
        sub = engine.build(cand.widths)
        records = fit(sub, data.train_set(augment=True), **tune.fit_kwargs(), **common)
        cand.finetuned_top1 = (records[-1]["val_top1"] if records
                               else accuracy(sub, data.val, device=engine.device)[0])
        _log.info("top-k candidate %s: val top-1 %.2f -> %.2f", cand.widths, cand.top1,
                  cand.finetuned_top1)
        tuned.append(cand)
    if not tuned:
        raise ValueError("train_top_k needs at least one candidate")
    tuned.sort(key=lambda c: -(c.finetuned_top1 or 0.0))
    best = tuned[0].widths
    model = scratch_subnet(engine, best, retrain.seed + 1)
    records = fit(model, data.train_set(augment=True), **retrain.fit_kwargs(), **common)
    val = accuracy(model, data.val, device=engine.device)[0]
    test = accuracy(model, data.test, device=engine.device)[0]
    return TopKResult(tuned, best, val, test, records)
