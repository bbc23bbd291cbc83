"""Study callbacks: a progress bar for people, and the study-level rejection tally."""

from __future__ import annotations

import logging
import sys
from types import TracebackType
from typing import TYPE_CHECKING

from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from searchprune.search.trials import (
    best_trials,
    evaluated_trials,
    is_multi_objective,
    rejected_proposals,
    top1,
)

if TYPE_CHECKING:
    import optuna

    from searchprune.search._interrupt import InterruptGuard

__all__ = [
    "REJECTED_PROPOSALS_ATTR",
    "ProgressCallback",
    "RecordRejections",
    "StopOnFailures",
    "StopOnRejections",
    "StopOnSignal",
]

REJECTED_PROPOSALS_ATTR = "rejected_proposals"
_log = logging.getLogger(__name__)
MAX_REJECTIONS_IN_A_ROW = 1000  # infeasible proposals before a worker gives up


class RecordRejections:
    """Keeps the study user attr ``rejected_proposals`` equal to the study-wide total."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        study.set_user_attr(REJECTED_PROPOSALS_ATTR,
                            rejected_proposals(study.get_trials(deepcopy=False)))


class StopOnFailures:
    """Stops this worker after ``limit`` FAILed trials in a row (an engine that only yields NaN
    would otherwise loop forever, since only COMPLETE trials count towards the budget)."""

    def __init__(self, limit: int = 20) -> None:
        self.limit = limit
        self.streak = 0

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.streak = self.streak + 1 if trial.state == TrialState.FAIL else 0
        if self.streak >= self.limit:
            study.stop()


class StopOnRejections:
    """Stops this worker after ``limit`` proposals in a row were rejected as infeasible (a
    projected sampler whose proposals keep violating ``pruning.params`` would otherwise loop
    forever); it logs which constraint they violated."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = MAX_REJECTIONS_IN_A_ROW if limit is None else limit
        self.streak = 0

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        infeasible = (trial.state == TrialState.PRUNED
                      and trial.user_attrs.get("feasible") is False)
        self.streak = self.streak + 1 if infeasible else 0
        if self.streak >= self.limit:
            _log.warning("stopping: the last %d proposals violated %s; loosen the constraint "
                         "or use the random or tpe sampler, which draw inside it", self.limit,
                         ", ".join(trial.user_attrs.get("violated", ["the band"])))
            study.stop()


class StopOnSignal:
    """Stops the optimize loop between trials once a SIGINT/SIGTERM has been recorded."""

    def __init__(self, guard: InterruptGuard) -> None:
        self.guard = guard

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.guard.pending is not None:
            study.stop()


class ProgressCallback:
    """A rich bar on stderr: evaluated/target, rejected proposals, best top-1 and its FLOPs ratio
    (or the size of the Pareto front), ETA. Silent when ``enabled`` is False or stderr is not a terminal. Use as a context manager."""

    def __init__(self, target: int, *, enabled: bool = True,
                 console: Console | None = None) -> None:
        self.target = target
        self.console = console or Console(stderr=True)
        self.enabled = enabled and (console is not None or sys.stderr.isatty())
        self._progress: Progress | None = None
        self._task = 0

    def __enter__(self) -> ProgressCallback:
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]search"), BarColumn(), MofNCompleteColumn(),
                TextColumn("rejected {task.fields[rejected]}"),
                TextColumn("best {task.fields[best]}"), TimeRemainingColumn(),
                console=self.console, transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("search", total=self.target, rejected=0, best="-")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self._progress is None:
            return
        trials = study.get_trials(deepcopy=False)
        self._progress.update(self._task, completed=min(len(evaluated_trials(trials)), self.target),
                              rejected=rejected_proposals(trials), best=best_text(study))


def best_text(study: optuna.Study) -> str:
    """``-``, the best top-1 and its FLOPs ratio, or the size of the Pareto front."""
    best = best_trials(study)
    if not best:
        return "-"
    if is_multi_objective(study):
        return f"front of {len(best)}"
    return f"{top1(best[0]):.2f}% @ FLOPs {best[0].user_attrs['flops_ratio']:.3f}"
