"""An exact budget of evaluated trials, shared by every worker of a study.

``MaxTrialsCallback`` stops a worker after its own trial once the study holds ``n`` COMPLETE
trials, so ``k`` workers can overshoot by up to ``k - 1`` trials in flight. Here an in-band trial
*claims* a slot before it is evaluated: under a lock that all workers of the study share, it
counts the evaluated trials (:func:`~searchprune.search.trials.is_evaluated`) plus the other
RUNNING trials holding a claim (user attr ``budget_claim`` equal to their own number; a
heartbeat retry copies the attr with the old number, so a copy does not count until it claims
itself). Below ``n`` it claims. At ``n`` evaluated it is *refused*: PRUNED with user attr ``refused`` and never evaluated, and the worker
stops. Otherwise (all slots held by trials still in flight) it waits: a claimed trial may yet
FAIL, and a dead worker's claim is freed when the heartbeat marks its trial FAIL.

Locks: a PostgreSQL advisory lock (released by the server if the worker dies), an ``flock`` on
``<file>.lock`` next to a SQLite file, a thread lock otherwise (in-memory storages are
single-process anyway).
"""

from __future__ import annotations

import contextlib
import fcntl
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, TrialState

from searchprune.search._liveness import reap_dead_workers, report_remote
from searchprune.search.trials import REFUSED_ATTR, is_evaluated, n_evaluated

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

__all__ = ["CLAIM_ATTR", "REFUSED_ATTR", "Budget", "StopAtBudget", "study_lock"]

CLAIM_ATTR = "budget_claim"
Lock = Callable[[], AbstractContextManager[None]]
_THREAD_LOCK = threading.Lock()


def study_lock(storage: BaseStorage, study_name: str) -> Lock:
    """A lock shared by every process working on ``study_name`` in ``storage``."""
    backend = getattr(storage, "_backend", storage)
    engine = getattr(backend, "engine", None)
    if engine is not None and engine.dialect.name == "postgresql":
        key = zlib.crc32(f"searchprune:{study_name}".encode())  # fits a bigint
        return lambda: _pg_lock(engine, key)
    if engine is not None and engine.dialect.name == "sqlite":
        database = engine.url.database
        if database and database != ":memory:":
            path = Path(f"{database}.lock")
            return lambda: _file_lock(path)
    return _thread_lock


@contextlib.contextmanager
def _pg_lock(engine: object, key: int) -> Iterator[None]:
    from sqlalchemy import text

    with engine.connect() as conn:  # type: ignore[attr-defined]
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def _thread_lock() -> Iterator[None]:
    with _THREAD_LOCK:
        yield


class Budget:
    """``n_trials`` evaluated trials in total, never more.

    Args:
        n_trials: the budget of evaluated trials.
        lock: from :func:`study_lock`.
        poll: seconds between checks while every free slot is held by a trial in flight.
        check: called while waiting (raises to abandon, e.g. on a signal).
        wait_for_others: count the other workers' claims. Without heartbeats a dead worker's
            trial stays RUNNING forever, so the runner turns this off for an RDB storage
            without heartbeats: the budget is then exact only up to the trials in flight.
    """

    def __init__(self, n_trials: int, lock: Lock, *, poll: float = 0.5,
                 check: Callable[[], None] | None = None, wait_for_others: bool = True) -> None:
        self.n_trials = n_trials
        self.lock = lock
        self.poll = poll
        self.check = check or (lambda: None)
        self.wait_for_others = wait_for_others

    def claim(self, trial: optuna.Trial) -> bool:
        """Claim a slot for ``trial`` (True), or False when the study already holds
        ``n_trials`` evaluated trials. Blocks while all remaining slots are held in flight."""
        reported: set[int] = set()  # trials of other hosts already named on stderr
        waiting = False
        while True:
            with self.lock():
                if waiting:  # a worker on this host that died meanwhile frees its slot at once
                    reap_dead_workers(trial.study)
                complete, claimed = self.count(trial.study, exclude=trial.number)
                claimed = claimed if self.wait_for_others else 0
                if complete >= self.n_trials:
                    return False
                if complete + claimed < self.n_trials:
                    trial.set_user_attr(CLAIM_ATTR, trial.number)
                    return True
            self.check()
            report_remote(trial.study, self.holders(trial.study, trial.number), reported)
            waiting = True
            time.sleep(self.poll)
            _fail_stale_trials(trial.study)  # a dead worker's claim frees its slot

    @staticmethod
    def holders(study: optuna.Study, exclude: int) -> list[FrozenTrial]:
        """RUNNING trials other than ``exclude`` that hold a claim."""
        return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if t.number != exclude and t.user_attrs.get(CLAIM_ATTR) == t.number]

    @staticmethod
    def count(study: optuna.Study, exclude: int | None = None) -> tuple[int, int]:
        """Evaluated trials and RUNNING trials (other than ``exclude``) that hold a claim."""
        complete = claimed = 0
        for t in study.get_trials(deepcopy=False, states=(
                TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)):
            if is_evaluated(t):
                complete += 1
            elif t.number != exclude and t.user_attrs.get(CLAIM_ATTR) == t.number:
                claimed += 1
        return complete, claimed


class StopAtBudget:
    """Study callback: stop this worker once the study holds ``n_trials`` evaluated trials."""

    def __init__(self, n_trials: int) -> None:
        self.n_trials = n_trials

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if n_evaluated(study) >= self.n_trials:
            study.stop()


def _fail_stale_trials(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
