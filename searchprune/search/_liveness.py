"""Which worker runs a trial, and whether it still exists.

Every trial records its worker (user attr ``worker``: host name, boot id, process id and the
process's start time from ``/proc/<pid>/stat``, so a reused process id is not mistaken for the
worker). A RUNNING trial whose worker is gone on *this* host (no such process, another process
under its id, or the machine rebooted) is marked FAIL at once, with a ``fail_reason`` starting
with ``interrupted``, and its configuration is enqueued again (``requeued_from``): a run
restarted after ``kill -9`` goes on immediately instead of waiting for the heartbeat's grace
period. A process that has exited but is not yet reaped by its parent (a zombie) counts as gone.
A trial on another host is left to the heartbeat; while a worker waits for one, it says so on
stderr. Once the budget is met, configurations still WAITING are dropped: PRUNED with
``refused`` like any candidate the budget no longer needs (never run, so not a failure), and no
WAITING or RUNNING trial is left behind.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from searchprune.search.trials import REFUSED_ATTR

__all__ = ["REQUEUED_ATTR", "WORKERS_ENV", "WORKER_ATTR", "drop_waiting", "identity", "is_gone",
           "reap_dead_workers", "report_remote"]

WORKER_ATTR = "worker"
# How many workers ``study run --workers K`` started on this machine (set in their environment).
WORKERS_ENV = "SEARCHPRUNE_WORKERS"
REQUEUED_ATTR = "requeued_from"
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _boot_id() -> str | None:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:  # not Linux
        return None


def _start_time(pid: int) -> int | None:
    """Clock ticks after boot at which process ``pid`` started (None: no such process, or one
    that has exited and waits to be reaped by its parent: a zombie runs no trial)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (the command name) may contain spaces and parentheses: split after its last ')'.
    fields = data[data.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):  # field 3 of proc(5): zombie, or dead
        return None
    return int(fields[19])  # field 22 of proc(5)


@functools.cache
def identity() -> dict[str, Any]:
    """This process as a worker: ``{host, boot_id, pid, start}``."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "boot_id": _boot_id(), "pid": pid,
            "start": _start_time(pid)}


def is_gone(worker: Any) -> bool | None:
    """True when ``worker`` (a recorded identity) no longer runs on this host, False when it
    does, None when it ran on another host (or this host cannot tell)."""
    if not isinstance(worker, dict):
        return None
    me = identity()
    if worker.get("host") != me["host"] or me["boot_id"] is None or me["start"] is None:
        return None
    if worker.get("boot_id") != me["boot_id"]:
        return True  # rebooted since: no process of that boot survives
    pid = worker.get("pid")
    return not isinstance(pid, int) or _start_time(pid) != worker.get("start")


def _describe(worker: dict[str, Any]) -> str:
    return f"pid {worker.get('pid')} on {worker.get('host')}"


def reap_dead_workers(study: optuna.Study) -> list[int]:
    """FAIL the RUNNING trials whose worker is gone on this host and enqueue their
    configurations again; returns their numbers. Call it under the study lock."""
    storage = study._storage
    reaped = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get(WORKER_ATTR)
        if not is_gone(worker):
            continue
        storage.set_trial_user_attr(t._trial_id, "fail_reason",
                                    f"interrupted: worker {_describe(worker)} is gone")
        if not storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
            continue
        reaped.append(t.number)
        if t.params:
            study.enqueue_trial(t.params, user_attrs={REQUEUED_ATTR: t.number})
    return reaped


def drop_waiting(study: optuna.Study, reason: str) -> list[int]:
    """Drop every WAITING trial (a retry the budget no longer needs); returns their numbers.
    Call it under the study lock, once the budget is met.

    A dropped trial never ran, so it is not a failure: it ends PRUNED with ``refused`` (the
    reason), as a candidate refused by the budget does. It is taken first as Optuna's workers
    take one (WAITING -> RUNNING, which only one process can win, under this worker's identity),
    so a trial another worker has just started is never touched.
    """

    storage = study._storage
    dropped = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if not storage.set_trial_state_values(t._trial_id, TrialState.RUNNING):
                continue  # another worker took it
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        storage.set_trial_user_attr(t._trial_id, WORKER_ATTR, identity())
        storage.set_trial_user_attr(t._trial_id, REFUSED_ATTR, reason)
        storage.set_trial_state_values(t._trial_id, TrialState.PRUNED)
        dropped.append(t.number)
    return dropped


def report_remote(study: optuna.Study, trials: list[FrozenTrial], seen: set[int]) -> None:
    """One stderr line per trial of another host this worker waits for (once per trial)."""
    storage = getattr(study._storage, "_backend", study._storage)
    grace = getattr(storage, "grace_period", None)
    for t in trials:
        worker = t.user_attrs.get(WORKER_ATTR)
        if t.number in seen or is_gone(worker) is not None:
            continue
        seen.add(t.number)
        who = _describe(worker) if isinstance(worker, dict) else "a worker of unknown host"
        age = _heartbeat_age(storage, t._trial_id)
        last = f"last heartbeat {age:.0f} s ago" if age is not None else "no heartbeat yet"
        limit = (f"; it is marked FAIL if silent for {grace} s" if grace else
                 "; without heartbeats it is never marked FAIL")
        sys.stderr.write(f"waiting for trial {t.number} ({who}, {last}){limit}\n")


def _heartbeat_age(storage: Any, trial_id: int) -> float | None:
    """Seconds since the trial's last heartbeat (RDB storages with heartbeats), else None."""
    try:
        import sqlalchemy
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        with _create_scoped_session(storage.scoped_session) as session:
            now = session.execute(sqlalchemy.func.now()).scalar().replace(tzinfo=None)
            beat = models.TrialHeartbeatModel.where_trial_id(trial_id, session)
            return None if beat is None else (now - beat.heartbeat).total_seconds()
    except Exception:  # noqa: BLE001  # a private API: no figure rather than a crash
        return None
