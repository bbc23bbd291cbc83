"""``study run --workers K``: K worker processes on this machine, one study, one storage.

Each worker is the same command (``study run ... --workers 1 --threads T``) in a subprocess with
``T = max(1, cores // K)`` torch threads, so the workers share the cores instead of
oversubscribing them. The parent only supervises: it shows one progress bar read from the
storage, forwards SIGINT/SIGTERM to the workers (each abandons its trial cleanly), and reports
their errors once (identical lines are merged).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from searchprune.config import Config

__all__ = ["LAUNCHER", "STORAGE_ENV", "cpu_cores", "run_workers", "threads_per_worker"]

# How a worker process starts: ``python <LAUNCHER...> study run ...`` (tests may swap it).
LAUNCHER: list[str] = ["-c", "import sys; from searchprune.cli.main import main; sys.exit(main())"]
# The storage URL reaches the workers in their environment, not on their command lines, which
# every user of the machine can read (``ps``): it may hold a password.
STORAGE_ENV = "SEARCHPRUNE_WORKER_STORAGE"
_INTERRUPTED = re.compile(r"^interrupted: trials? ([\d, ]+) marked FAIL")


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    return max(1, cpu_cores() // workers)


def run_workers(cfg: Config, storage: Any, worker_args: Sequence[str], workers: int, *,
                progress: bool, poll: float = 1.0) -> tuple[int, list[str], list[int], int | None]:
    """Start ``workers`` processes running ``study run *worker_args`` and wait for them.

    Returns the first non-zero exit code (0 when all succeeded), the workers' distinct stderr
    lines, the trials they abandoned on a signal, and the signal the parent received (or None).
    """
    from searchprune.search import ProgressCallback, derive_study_name

    received: list[int] = []
    logs = [tempfile.TemporaryFile(mode="w+") for _ in range(workers)]
    command = [sys.executable, *LAUNCHER, "study", "run", *worker_args]
    from searchprune.search._liveness import WORKERS_ENV
    from searchprune.search.storage import resolve_storage_url

    env = {**os.environ, STORAGE_ENV: resolve_storage_url(cfg.storage),
           WORKERS_ENV: str(workers)}
    procs = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=env)
             for log in logs]

    def forward(signum: int, frame: FrameType | None) -> None:
        if signum in received:
            return
        received.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with ProgressCallback(cfg.search.n_trials, enabled=progress) as bar:
            while any(p.poll() is None for p in procs):
                _update(bar, storage, derive_study_name(cfg))
                time.sleep(poll)
            _update(bar, storage, derive_study_name(cfg))
    finally:
        for p in procs:
            p.wait()
        for s, handler in previous.items():
            signal.signal(s, handler)
    codes = [p.returncode for p in procs]
    lines, abandoned = _merge(_read(log) for log in logs)
    return (next((c for c in codes if c != 0), 0), lines, abandoned,
            received[0] if received else None)


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
    """Distinct lines in first-seen order, and the trials named by the workers'
    ``interrupted: trial N marked FAIL`` lines (the caller reports them in one line)."""
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
    return seen, abandoned
