"""The trial: suggest keep-ratios, gate on the analytic FLOPs band, evaluate, record.

Every trial stores, as user attributes (the dashboard shows them; it cannot show constraints):
``flops``, ``flops_ratio``, ``macs``, ``params``, ``params_ratio``, ``widths``, ``feasible``,
``band_violation``; evaluated trials add ``top1``, ``top5`` and ``seconds_*``. Out-of-band
proposals are PRUNED without evaluation (``feasible: false``). A trial FAILs with a
``fail_reason`` user attr when the evaluation yields NaN/inf, when reconstruction meets NaN/inf
features (``FloatingPointError``), or when a signal interrupts it; the study goes on (or, after a
signal, stops cleanly). With a :class:`~searchprune.search.budget.Budget`, an in-band trial
claims a slot before evaluation; a trial refused because the budget is spent is PRUNED with
``refused`` and never evaluated.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, TrialState

from searchprune.errors import ConfigError
from searchprune.search._band_random import REJECTED_DRAWS_ATTR
from searchprune.search._interrupt import InterruptGuard, signal_name
from searchprune.search.band import Band, project_to_band
from searchprune.search.budget import REFUSED_ATTR, Budget
from searchprune.search.samplers import sampler_spec

if TYPE_CHECKING:
    from searchprune.config import Config
    from searchprune.engine import PruningEngine

__all__ = ["BAND_CONSTRAINT", "Counters", "make_objective", "make_pruner", "rejected_proposals"]

BAND_CONSTRAINT = "flops_band"


@dataclass
class Counters:
    """What this process's objective has done (the progress bar reads it)."""

    evaluated: int = 0
    rejected: int = 0
    failed: int = 0
    refused: int = 0
    interrupted: list[int] = field(default_factory=list)  # trials FAILed by a signal


def make_objective(engine: PruningEngine, cfg: Config, counters: Counters | None = None, *,
                   budget: Budget | None = None, guard: InterruptGuard | None = None
                   ) -> Callable[[optuna.Trial], float]:
    """The function ``study.optimize`` calls: returns validation top-1 (percent), maximised.

    ``budget`` makes the count of evaluated trials exact across workers; ``guard`` lets a
    signal abandon the trial cleanly (see :mod:`searchprune.search._interrupt`).
    """
    p = cfg.pruning
    band = Band(p.gamma, p.tolerance)
    project = sampler_spec(cfg.search.sampler).projects
    counts = counters if counters is not None else Counters()
    guard = guard if guard is not None else InterruptGuard()  # inert unless entered

    def evaluate(trial: optuna.Trial) -> float:
        guard.check()
        ratios = {g.name: trial.suggest_float(g.name, p.eta, 1.0) for g in engine.groups}
        if project:
            ratios = project_to_band(engine, ratios, band, p.eta)
            trial.set_user_attr("projected", True)
        widths = engine.widths(ratios)
        feasible = _record_cost(trial, engine, widths, band)
        if not feasible:
            counts.rejected += 1
            raise optuna.TrialPruned("outside the FLOPs band")
        if budget is not None and not budget.claim(trial):
            counts.refused += 1
            trial.set_user_attr(REFUSED_ATTR, f"budget of {budget.n_trials} evaluated trials "
                                              "reached by other workers; not evaluated")
            trial.study.stop()
            raise optuna.TrialPruned("budget reached")
        try:
            with guard.raising():
                result = engine.evaluate(widths, split="val", on_chunk=_early_stop(trial))
        except FloatingPointError as exc:
            return _fail(trial, counts, f"reconstruction failed: {exc}")
        trial.set_user_attr("proxy", cfg.pruning.proxy if cfg.setting == "pretrained" else "supernet-bn")
        for key in ("build", "abn", "reconstruct", "evaluate"):
            trial.set_user_attr(f"seconds_{key}", float(result.seconds.get(key, 0.0)))
        if not (math.isfinite(result.top1) and math.isfinite(result.top5)):
            return _fail(trial, counts, f"evaluation returned top1={result.top1}, "
                                        f"top5={result.top5}")
        if result.stopped_early:
            trial.set_user_attr("stopped_early", True)
            trial.set_user_attr("partial_top1", float(result.top1))
            raise optuna.TrialPruned("stopped early by the pruner")
        trial.set_user_attr("top1", float(result.top1))
        trial.set_user_attr("top5", float(result.top5))
        counts.evaluated += 1
        return float(result.top1)

    def objective(trial: optuna.Trial) -> float:
        try:
            return evaluate(trial)
        except KeyboardInterrupt as exc:  # Optuna marks the trial FAIL and re-raises
            counts.interrupted.append(trial.number)
            signum = getattr(exc, "signum", None)
            reason = f"interrupted by {signal_name(signum) if signum else 'KeyboardInterrupt'}"
            with contextlib.suppress(Exception):  # best effort while unwinding
                trial.set_user_attr("fail_reason", reason)
            raise

    return objective


def _fail(trial: optuna.Trial, counts: Counters, reason: str) -> float:
    counts.failed += 1
    trial.set_user_attr("fail_reason", reason)
    return math.nan  # Optuna marks the trial FAIL and the study goes on


def _record_cost(trial: optuna.Trial, engine: PruningEngine, widths: Mapping[str, int],
                 band: Band) -> bool:
    cost, base = engine.cost(widths), engine.base_cost
    r = engine.flops_ratio(widths)
    distance = band.distance(r)
    feasible = distance <= 0.0
    attrs = {
        "flops": int(cost.flops), "flops_ratio": float(r), "macs": int(cost.macs),
        "params": int(cost.params), "params_ratio": cost.params / base.params,
        "widths": {k: int(v) for k, v in widths.items()}, "feasible": feasible,
        "band_violation": max(0.0, distance),
    }
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    trial.set_constraint(BAND_CONSTRAINT, distance)
    return feasible


def _early_stop(trial: optuna.Trial) -> Callable[[int, float], bool] | None:
    if isinstance(trial.study.pruner, optuna.pruners.NopPruner):
        return None

    def on_chunk(images: int, top1: float) -> bool:
        trial.report(top1, step=images)
        return trial.should_prune()

    return on_chunk


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """``none`` (evaluate every in-band proposal fully) or ``median`` (stop below the median)."""
    pruners: dict[str, Callable[[], optuna.pruners.BasePruner]] = {
        "none": optuna.pruners.NopPruner,
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=5),
    }
    if name not in pruners:
        raise ConfigError(f"unknown search.pruner '{name}'; choose one of: {', '.join(pruners)}")
    return pruners[name]()


def rejected_proposals(trials: Iterable[FrozenTrial]) -> int:
    """Out-of-band proposals: draws rejected inside the random and TPE samplers plus PRUNED
    infeasible trials (any other sampler that proposes out of band)."""
    total = 0
    for t in trials:
        total += int(t.user_attrs.get(REJECTED_DRAWS_ATTR, 0))
        if t.state == TrialState.PRUNED and t.user_attrs.get("feasible") is False:
            total += 1
    return total
