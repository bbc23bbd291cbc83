"""``study run --workers K``: K worker processes on this machine, one study, one storage.

Each worker is the same command (``study run ... --workers 1 --threads T``) in a subprocess with
``T = max(1, cores // K)`` torch threads, so the workers share the cores instead of
oversubscribing them. The parent only supervises: it shows one progress bar read from the
storage, forwards SIGINT/SIGTERM to the workers (each abandons its trial cleanly), and reports
their errors once (identical lines are merged). Every worker is polled (and so reaped) on every
round, whatever the order in which they end: when one is killed outright (``kill -9``), the trial
it left RUNNING is failed and queued again at once, so the others take it over instead of
waiting for the heartbeat's grace period, and the parent names the dead worker on exit. The
workers share one run id, so ``search.max_consecutive_failures`` failed trials in a row stop
them all, each naming the same last trial: the parent shows that line once.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from searchprune.config import Config

__all__ = ["INDEX_ENV", "LAUNCHER", "STORAGE_ENV", "Killed", "WorkersResult", "cpu_cores",
           "run_workers", "threads_per_worker"]

# How a worker process starts: ``python <LAUNCHER...> study run ...`` (tests may swap it).
LAUNCHER: list[str] = ["-c", "import sys; from searchprune.cli.main import main; sys.exit(main())"]
# The storage URL reaches the workers in their environment, not on their command lines, which
# every user of the machine can read (``ps``): it may hold a password.
STORAGE_ENV = "SEARCHPRUNE_WORKER_STORAGE"
# Which of the K workers a process is (1..K), as the parent names it in its messages.
INDEX_ENV = "SEARCHPRUNE_WORKER_INDEX"
_INTERRUPTED = re.compile(r"^interrupted: trials? ([\d, ]+) marked FAIL")


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    return max(1, cpu_cores() // workers)


@dataclass(frozen=True)
class Killed:
    """A worker that ended by a signal it did not handle (``kill -9``, a crash)."""

    index: int  # 1..K
    pid: int
    signum: int

    def describe(self) -> str:
        """``2 (pid 4242) was killed by SIGKILL``."""
        try:
            name = signal.Signals(self.signum).name
        except ValueError:
            name = f"signal {self.signum}"
        return f"{self.index} (pid {self.pid}) was killed by {name}"


@dataclass
class WorkersResult:
    """How the workers ended: the first non-zero exit code (0 when all succeeded), their
    distinct stderr lines, the trials they abandoned on a signal, the signal the parent
    received (or None), and the workers killed outright."""

    code: int = 0
    lines: list[str] = field(default_factory=list)
    abandoned: list[int] = field(default_factory=list)
    signum: int | None = None
    killed: list[Killed] = field(default_factory=list)


def run_workers(cfg: Config, storage: Any, worker_args: Sequence[str], workers: int, *,
                progress: bool, poll: float = 1.0) -> WorkersResult:
    """Start ``workers`` processes running ``study run *worker_args`` and wait for them all."""
    from searchprune.search import ProgressCallback, derive_study_name
    from searchprune.search._liveness import WORKERS_ENV
    from searchprune.search.callbacks import RUN_ENV
    from searchprune.search.storage import resolve_storage_url

    received: list[int] = []
    logs = [tempfile.TemporaryFile(mode="w+") for _ in range(workers)]
    command = [sys.executable, *LAUNCHER, "study", "run", *worker_args]
    env = {**os.environ, STORAGE_ENV: resolve_storage_url(cfg.storage),
           WORKERS_ENV: str(workers), RUN_ENV: uuid.uuid4().hex}  # one run: one failure count
    procs = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log,
                              env={**env, INDEX_ENV: str(i + 1)})
             for i, log in enumerate(logs)]

    def forward(signum: int, frame: FrameType | None) -> None:
        if signum in received:
            return
        received.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    name = derive_study_name(cfg)
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with ProgressCallback(cfg.search.n_trials, enabled=progress) as bar:
            _supervise(procs, storage, name, bar, poll)
            _update(bar, storage, name)
    finally:
        for p in procs:
            p.wait()
        for s, handler in previous.items():
            signal.signal(s, handler)
    killed = [Killed(i + 1, p.pid, -p.returncode) for i, p in enumerate(procs)
              if p.returncode < 0]
    if killed:  # no trial of a dead worker left RUNNING, no retry left WAITING past the budget
        from searchprune.search.runner import tidy_up

        _with_study(storage, name, lambda study, lock: tidy_up(study, lock, cfg.search.n_trials))
    lines, abandoned = _merge(_read(log) for log in logs)
    code = next((p.returncode for p in procs if p.returncode != 0), 0)
    return WorkersResult(code, lines, abandoned, received[0] if received else None, killed)


def _supervise(procs: Sequence[subprocess.Popen[bytes]], storage: Any, name: str, bar: Any,
               poll: float) -> None:
    """Wait for every worker. Each round polls them *all*, so a dead one is reaped at once, not
    only once those started before it have ended; when one has failed or died, the trials it
    left RUNNING are failed and queued again for the others."""
    ended: set[int] = set()
    while True:
        codes = [p.poll() for p in procs]  # a list, not any(): every worker is polled
        new = {i for i, c in enumerate(codes) if c is not None} - ended
        ended |= new
        if any(codes[i] != 0 for i in new):
            _with_study(storage, name, _reap)
        if len(ended) == len(procs):
            return
        _update(bar, storage, name)
        time.sleep(poll)


def _reap(study: Any, lock: Any) -> None:
    from searchprune.search._liveness import reap_dead_workers

    with lock():
        reap_dead_workers(study)


def _with_study(storage: Any, name: str, action: Callable[[Any, Any], None]) -> None:
    """``action(study, lock)`` on the study, if the workers have created it."""
    import optuna

    from searchprune.search.budget import study_lock

    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # the workers died before creating it
        return
    action(study, study_lock(storage, name))


def _update(bar: Any, storage: Any, name: str) -> None:
    import optuna

    try:
        bar(optuna.load_study(study_name=name, storage=storage), None)
    except KeyError:  # the workers have not created the study yet
        pass


def _read(log: Any) -> list[str]:
    log.seek(0)
    lines = [line.rstrip() for line in log.read().splitlines() if line.strip()]
    log.close()
    return lines


def _merge(outputs: Any) -> tuple[list[str], list[int]]:
    """Distinct lines in first-seen order, ``error:`` lines last, and the trials named by the
    workers' ``interrupted: trial N marked FAIL`` lines (the caller reports them in one line)."""
    seen: list[str] = []
    abandoned: list[int] = []
    for lines in outputs:
        for line in lines:
            m = _INTERRUPTED.match(line)
            if m:
                abandoned += [int(n) for n in m.group(1).split(",")]
            elif line.startswith("interrupted:"):
                continue
            elif line not in seen:
                seen.append(line)
    errors = [line for line in seen if line.startswith("error:")]
    return [line for line in seen if line not in errors] + errors, abandoned
