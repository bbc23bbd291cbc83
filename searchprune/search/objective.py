"""The trial: suggest keep-ratios, gate on the analytic FLOPs band, evaluate, record.

The trial reads the problem from a resolved :class:`~searchprune.search.problem.Problem`: the
keep-ratio ranges, the gate, and what is optimised, an :class:`ObjectiveSpec`
(:func:`describe_objective`): its directions and metric names, the band that gates candidates,
whether proposals are projected onto it, and how a trial's value is computed from the evaluation
(``single``: validation top-1; ``pareto``: validation top-1 and the ``search.pareto_cost`` ratio
(FLOPs, params or predicted latency) over ``search.gamma_range``). Everything else is shared.
With ``pruning.gamma: null`` there is no band: the gate holds the limits only and proposals are
projected onto the primary one (``pruning.latency``, else ``pruning.params``).

Every trial stores, as user attributes (the dashboard shows them; it cannot show constraints):
``flops``, ``flops_ratio``, ``macs``, ``params``, ``params_ratio``, ``widths``, ``feasible``,
``band_violation``; with a latency table (``pruning.latency`` or a latency Pareto study)
``latency_ms`` and ``latency_ratio`` (predicted); evaluated trials add ``top1``, ``top5`` and
``seconds_*`` (with least squares, ``least_squares``: how many layers it ``fitted``,
``kept`` as they were because the fit did no better on held-out images, ``skipped`` for
too few samples, and ``not_fitted``: no fit applies, see ``model info``), and with
``pruning.latency.measure`` the built network's
``latency_ms_measured``, ``latency_ratio_measured`` and ``latency_unreliable`` (true when
other workers share this machine, so the timing is disturbed). Out-of-band
proposals are PRUNED without evaluation (``feasible: false``). A trial FAILs with a
``fail_reason`` user attr when the evaluation yields NaN/inf, when reconstruction meets NaN/inf
features (``FloatingPointError``), when anything in the trial raises (the reason is the
exception's type and first line, logged in one line; ``--debug`` logs the traceback; storage
errors still stop the run), or when a signal interrupts it; the study goes on (or, after a
signal, stops cleanly; after ``search.max_consecutive_failures`` FAILs in a row, see
:class:`~searchprune.search.callbacks.StopOnFailures`). A FAILed trial is not evaluated: it
frees its budget slot. With a :class:`~searchprune.search.budget.Budget`, an in-band trial
claims a slot before evaluation; a trial refused because the budget is spent is PRUNED with
``refused`` and never evaluated.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from searchprune.errors import ConfigError, exception_line, unknown_choice
from searchprune.redact import redact_text
from searchprune.search._interrupt import InterruptGuard, signal_name
from searchprune.search._liveness import WORKER_ATTR, WORKERS_ENV, identity
from searchprune.search.band import BAND_CONSTRAINT, Gate
from searchprune.search.budget import REFUSED_ATTR, Budget
from searchprune.search.problem import ObjectiveSpec, Problem, describe_objective
from searchprune.search.trials import rejected_proposals

if TYPE_CHECKING:
    from searchprune.engine import Engine
    from searchprune.latency import LatencyModel

__all__ = ["BAND_CONSTRAINT", "Counters", "ObjectiveSpec", "describe_objective",
           "make_objective", "make_pruner", "rejected_proposals"]


@dataclass
class Counters:
    """What this process's objective has done (the progress bar reads it)."""

    evaluated: int = 0
    rejected: int = 0
    failed: int = 0
    refused: int = 0
    interrupted: list[int] = field(default_factory=list)  # trials FAILed by a signal
    failures: list[int] = field(default_factory=list)  # trials FAILed with a logged reason


Value = float | tuple[float, ...]
_log = logging.getLogger(__name__)


def make_objective(problem: Problem, counters: Counters | None = None, *,
                   budget: Budget | None = None,
                   guard: InterruptGuard | None = None) -> Callable[[optuna.Trial], Value]:
    """The function ``study.optimize`` calls: the value(s) of ``problem.objective``, e.g.
    validation top-1 in percent, maximised.

    ``budget`` makes the count of evaluated trials exact across workers; ``guard`` lets a
    signal abandon the trial cleanly (see :mod:`searchprune.search._interrupt`). The latency
    table is the problem's (the runner shares one per study); when the problem needs one and
    holds none, it is measured here, for this process only.
    """
    if problem.needs_latency:
        from searchprune.latency import latency_for_engine

        problem = problem.with_latency(latency_for_engine(problem.engine, problem.goal.latency))
    cfg, engine, spec, gate, latency = (problem.cfg, problem.engine, problem.objective,
                                        problem.gate, problem.latency)
    project, eta = spec.project, problem.eta
    counts = counters if counters is not None else Counters()
    guard = guard if guard is not None else InterruptGuard()  # inert unless entered
    bounds, fixed = problem.ranges.bounds, problem.ranges.fixed

    def evaluate(trial: optuna.Trial) -> Value:
        guard.check()
        trial.set_user_attr(WORKER_ATTR, identity())  # a killed worker's trial is seen at once
        ratios = {g.name: fixed[g.name] if g.name in fixed
                  else trial.suggest_float(g.name, *bounds[g.name]) for g in engine.groups}
        if project:
            free = {k: v for k, v in ratios.items() if k not in fixed}
            ratios = gate.project(free, eta, bounds=bounds)
            trial.set_user_attr("projected", True)
        widths = engine.widths(ratios)
        violated, costs = _record_cost(trial, engine, widths, gate, latency)
        if violated:
            counts.rejected += 1
            raise optuna.TrialPruned(f"violates {', '.join(violated)}")
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
            return _fail(trial, counts, spec, f"reconstruction failed: {exc}")
        trial.set_user_attr("proxy", cfg.pruning.proxy if cfg.setting == "pretrained"
                            else "supernet-bn")
        for key in dict.fromkeys(("build", "abn", "reconstruct", "evaluate", *result.seconds)):
            trial.set_user_attr(f"seconds_{key}", float(result.seconds.get(key, 0.0)))
        if getattr(result, "least_squares", None) is not None:
            trial.set_user_attr("least_squares", dict(result.least_squares))
        if not (math.isfinite(result.top1) and math.isfinite(result.top5)):
            return _fail(trial, counts, spec,
                         f"evaluation returned top1={result.top1}, top5={result.top5}")
        if result.stopped_early:
            trial.set_user_attr("stopped_early", True)
            trial.set_user_attr("partial_top1", float(result.top1))
            counts.evaluated += 1  # an evaluated trial (search/trials.py), worth no value
            raise optuna.TrialPruned("stopped early by the pruner")
        trial.set_user_attr("top1", float(result.top1))
        trial.set_user_attr("top5", float(result.top5))
        if latency is not None and latency.spec.measure:
            _record_measured_latency(trial, latency, widths)
        counts.evaluated += 1
        return spec.values(result.top1, costs[f"{spec.cost}_ratio"])

    def objective(trial: optuna.Trial) -> Value:
        try:
            return evaluate(trial)
        except KeyboardInterrupt as exc:  # Optuna marks the trial FAIL and re-raises
            counts.interrupted.append(trial.number)
            signum = getattr(exc, "signum", None)
            reason = f"interrupted by {signal_name(signum) if signum else 'KeyboardInterrupt'}"
            with contextlib.suppress(Exception):  # best effort while unwinding
                trial.set_user_attr("fail_reason", reason)
            raise
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            if _is_storage_error(exc):  # nothing can be recorded: the run stops (one line)
                raise
            return _fail(trial, counts, spec, exception_line(exc), exc)

    return objective


def _is_storage_error(exc: Exception) -> bool:
    return isinstance(exc, optuna.exceptions.StorageInternalError) or any(
        c.__module__.startswith("sqlalchemy") for c in type(exc).__mro__)


def _fail(trial: optuna.Trial, counts: Counters, spec: ObjectiveSpec, reason: str,
          exc: BaseException | None = None) -> Value:
    """Record ``reason``, log it in one line (the traceback only with ``--debug``) and return
    the value that makes Optuna mark the trial FAIL; the study goes on."""
    reason = redact_text(reason)
    counts.failed += 1
    counts.failures.append(trial.number)
    trial.set_user_attr("fail_reason", reason)
    _log.warning("trial %d failed: %s", trial.number, reason)
    if exc is not None and _log.isEnabledFor(logging.DEBUG):
        _log.debug("trial %d traceback", trial.number, exc_info=exc)
    return spec.failed()


def _record_cost(trial: optuna.Trial, engine: Engine, widths: Mapping[str, int],
                 gate: Gate, latency: LatencyModel | None = None
                 ) -> tuple[list[str], dict[str, Any]]:
    """Store the cost attributes and constraint values; return the violated constraints and
    the attributes."""
    cost, base = engine.cost(widths), engine.base_cost
    r = engine.flops_ratio(widths)
    distances = gate.distances(widths)
    violated = [name for name, d in distances.items() if d > 0.0]
    attrs: dict[str, Any] = {
        "flops": int(cost.flops), "flops_ratio": float(r), "macs": int(cost.macs),
        "params": int(cost.params), "params_ratio": cost.params / base.params,
        "widths": {k: int(v) for k, v in widths.items()}, "feasible": not violated,
        "band_violation": max(0.0, distances.get(BAND_CONSTRAINT, 0.0)),
    }
    if latency is not None:
        attrs["latency_ms"] = float(latency.predict_ms(widths))
        attrs["latency_ratio"] = float(latency.ratio(widths))
    if violated:
        attrs["violated"] = violated
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    for name, d in distances.items():
        trial.set_constraint(name, d)
    return violated, attrs


def _record_measured_latency(trial: optuna.Trial, latency: LatencyModel,
                             widths: Mapping[str, int]) -> None:
    """Time the built network of ``widths`` (the table's batch, threads and dtype) and store
    it next to the prediction; ``latency_unreliable`` when other workers share the machine."""
    start = time.perf_counter()
    ms = latency.measure_ms(widths)
    trial.set_user_attr("latency_ms_measured", float(ms))
    trial.set_user_attr("latency_ratio_measured", float(ms / latency.table.measured_base_ms))
    trial.set_user_attr("latency_unreliable", _machine_shared(trial))
    trial.set_user_attr("seconds_latency", time.perf_counter() - start)


def _machine_shared(trial: optuna.Trial) -> bool:
    """Whether other workers run on this machine: started by ``study run --workers K``
    (K > 1), or another process of this host holds a RUNNING trial of the study."""
    with contextlib.suppress(ValueError):
        if int(os.environ.get(WORKERS_ENV, "1")) > 1:
            return True
    me = identity()
    for t in trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w = t.user_attrs.get(WORKER_ATTR)
        if (t.number != trial.number and isinstance(w, Mapping) and w.get("pid") != me["pid"]
                and w.get("host") == me["host"] and w.get("boot_id") == me["boot_id"]):
            return True
    return False


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
        raise ConfigError(unknown_choice("search.pruner", name, pruners))
    return pruners[name]()
