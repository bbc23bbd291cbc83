"""What a study's trials mean, defined once: evaluated trials, rejected proposals, the best.

An *evaluated* trial is a candidate whose network was built and scored: COMPLETE, or PRUNED by
the median pruner after a partial evaluation (user attr ``stopped_early``). The budget, the
progress bar, the comparison reports and ``study show`` all count with :func:`is_evaluated`, so
early stopping saves evaluations instead of buying extra candidates. The best of a study is
its highest validation top-1 for a single-objective study and its Pareto front (top-1 against
FLOPs ratio) for a multi-objective one (:func:`best_trials`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from searchprune.search._band_random import REJECTED_DRAWS_ATTR
from searchprune.search.pareto import front_trials

REFUSED_ATTR = "refused"  # set on a trial the budget turned away unrun (PRUNED, not evaluated)

__all__ = ["REFUSED_ATTR", "best_trials", "evaluated_trials", "in_flops_range", "is_evaluated",
           "is_multi_objective", "n_evaluated", "rejected_proposals", "top1"]


def is_evaluated(t: FrozenTrial) -> bool:
    """COMPLETE, or stopped early by the pruner after a partial evaluation."""
    return t.state == TrialState.COMPLETE or (
        t.state == TrialState.PRUNED and bool(t.user_attrs.get("stopped_early")))


def evaluated_trials(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if is_evaluated(t)]


def n_evaluated(study: optuna.Study) -> int:
    return len(evaluated_trials(study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))))


def is_multi_objective(study: optuna.Study) -> bool:
    return len(study.directions) > 1


def top1(t: FrozenTrial) -> float | None:
    """Validation top-1 (percent) of a fully evaluated trial, else None."""
    value = t.user_attrs.get("top1")
    if value is None and t.state == TrialState.COMPLETE and t.values:
        value = t.values[0]
    return None if value is None else float(value)


def in_flops_range(t: FrozenTrial, flops_min: float | None = None,
                   flops_max: float | None = None) -> bool:
    r = t.user_attrs.get("flops_ratio")
    if r is None:
        return flops_min is None and flops_max is None
    return (flops_min is None or r >= flops_min) and (flops_max is None or r <= flops_max)


def best_trials(study: optuna.Study, *, flops_min: float | None = None,
                flops_max: float | None = None) -> list[FrozenTrial]:
    """The fully evaluated trials that carry widths, within the FLOPs-ratio bounds, best first.

    Single-objective: every such trial by validation top-1 (ties: lower trial number).
    Multi-objective: the Pareto front of those trials (maximise top-1, minimise the FLOPs
    ratio), by validation top-1, so the first is the most accurate front member in range.
    """
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if top1(t) is not None and "widths" in t.user_attrs
            and in_flops_range(t, flops_min, flops_max)]
    if is_multi_objective(study):
        done = front_trials(done)
    return sorted(done, key=lambda t: (-(top1(t) or 0.0), t.number))


def rejected_proposals(trials: Sequence[FrozenTrial] | Iterable[FrozenTrial]) -> int:
    """Out-of-band proposals: draws rejected inside the random and TPE samplers plus PRUNED
    infeasible trials (any other sampler that proposes out of band)."""
    total = 0
    for t in trials:
        total += int(t.user_attrs.get(REJECTED_DRAWS_ATTR, 0))
        if t.state == TrialState.PRUNED and t.user_attrs.get("feasible") is False:
            total += 1
    return total
