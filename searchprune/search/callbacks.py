"""Study callbacks: a progress bar for people, the study-level rejection tally, and the stops
(signal, failures in a row, rejections in a row)."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from searchprune.errors import SearchpruneError
from searchprune.search.trials import (
    best_trials,
    evaluated_trials,
    is_evaluated,
    is_multi_objective,
    rejected_proposals,
    top1,
)

if TYPE_CHECKING:
    import optuna

    from searchprune.search._interrupt import InterruptGuard
    from searchprune.search.budget import Lock

__all__ = [
    "FAILURE_STOP_ATTR",
    "REJECTED_PROPOSALS_ATTR",
    "RUN_ENV",
    "ProgressCallback",
    "RecordRejections",
    "StopOnFailures",
    "StopOnRejections",
    "StopOnSignal",
    "TrialsFailing",
    "failure_streak",
]

REJECTED_PROPOSALS_ATTR = "rejected_proposals"
FAILURE_STOP_ATTR = "stopped_on_failures"
# The id of one run of a study: ``study run --workers K`` hands its workers the same one.
RUN_ENV = "SEARCHPRUNE_RUN_ID"
_log = logging.getLogger(__name__)
MAX_REJECTIONS_IN_A_ROW = 1000  # infeasible proposals before a worker gives up


class RecordRejections:
    """Keeps the study user attr ``rejected_proposals`` equal to the study-wide total."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        study.set_user_attr(REJECTED_PROPOSALS_ATTR,
                            rejected_proposals(study.get_trials(deepcopy=False)))


class TrialsFailing(SearchpruneError):
    """``search.max_consecutive_failures`` trials in a row FAILed: the run stopped (exit 1)."""

    def __init__(self, mark: Mapping[str, Any]) -> None:
        self.mark = dict(mark)
        super().__init__(
            f"stopped after {mark['count']} failed trials in a row "
            f"(search.max_consecutive_failures: {mark['limit']}); the last, trial "
            f"{mark['trial']}, failed with {mark['reason']}; fix the cause (rerun with --debug "
            "for the tracebacks) and re-run the same command to resume")


def failure_streak(trials: Iterable[FrozenTrial], first: int = 0) -> list[FrozenTrial]:
    """The FAILed trials (numbers >= ``first``) since the last evaluated one, in the order
    they finished. Only failures with a reason count (an evaluation that raised or gave NaN);
    trials interrupted by a signal or a dead worker, and proposals never evaluated (rejected,
    refused) neither count nor break the streak."""
    done = sorted((t for t in trials if t.number >= first and t.datetime_complete is not None),
                  key=lambda t: (t.datetime_complete, t.number))
    streak: list[FrozenTrial] = []
    for t in done:
        if is_evaluated(t):
            streak = []
        elif t.state == TrialState.FAIL and _failed_itself(t):
            streak.append(t)
    return streak


def _failed_itself(t: FrozenTrial) -> bool:
    reason = t.user_attrs.get("fail_reason")
    return isinstance(reason, str) and not reason.startswith("interrupted")


class StopOnFailures:
    """Stops the run after ``limit`` trials in a row FAILed (:func:`failure_streak` of the trials
    since this worker joined, those of every worker of the study, in the order they finished).

    The first worker to see the streak writes the study user attr ``stopped_on_failures``
    (under ``lock``): the run id, the count, the last trial and its reason. Every worker of the
    same run (``run``: the id that ``study run --workers K`` hands its workers) stops at its
    next trial, or before its first, and reports that same trial, so the parent shows one line.
    A later run has another id and starts a fresh count. :attr:`mark` is set once it stopped.
    """

    def __init__(self, limit: int = 5, *, first: int = 0, run: str = "",
                 lock: Lock | None = None) -> None:
        self.limit = limit
        self.first = first
        self.run = run
        self.lock: Lock = lock or contextlib.nullcontext
        self.mark: dict[str, Any] | None = None

    def marked(self, study: optuna.Study) -> dict[str, Any] | None:
        """This run's stop mark in ``study``, if a worker has written it."""
        mark = study.user_attrs.get(FAILURE_STOP_ATTR)
        return dict(mark) if isinstance(mark, Mapping) and mark.get("run") == self.run else None

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        mark = self.marked(study)
        if mark is None:
            streak = failure_streak(study.get_trials(deepcopy=False), self.first)
            if len(streak) < self.limit:
                return
            with self.lock():
                mark = self.marked(study)
                if mark is None:
                    last = streak[-1]
                    mark = {"run": self.run, "count": len(streak), "limit": self.limit,
                            "trial": last.number, "reason": last.user_attrs["fail_reason"]}
                    study.set_user_attr(FAILURE_STOP_ATTR, mark)
        self.mark = mark
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
