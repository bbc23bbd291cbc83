"""SIGINT/SIGTERM during a study: abandon the trial in flight cleanly, never mid-write.

While the pruning engine evaluates a configuration (pure torch work) a signal raises
:class:`Interrupted` at once, so Optuna marks the trial FAIL and re-raises. Elsewhere (sampling,
storage writes, callbacks) the signal is only recorded: the objective raises it at its next
check point, before any evaluation, and a callback stops the optimize loop between trials. So a
clean signal never leaves a RUNNING trial behind. Only the first signal counts; repeats are
ignored (a hard stop is SIGKILL, which the heartbeat cleans up after the grace period).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType

from searchprune.errors import SearchpruneError

__all__ = ["InterruptGuard", "Interrupted", "StudyInterrupted", "signal_name"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class Interrupted(KeyboardInterrupt):
    """A SIGINT or SIGTERM; a KeyboardInterrupt so Optuna marks the running trial FAIL."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal_name(signum))
        self.signum = signum


class StudyInterrupted(SearchpruneError):
    """The study run stopped on a signal; exit code ``128 + signum`` (130 SIGINT, 143 SIGTERM)."""

    def __init__(self, signum: int, trials: list[int] | None = None) -> None:
        self.signum = signum
        self.trials = sorted(trials or [])
        self.exit_code = 128 + signum
        if not self.trials:
            what = "no trial in flight"
        elif len(self.trials) == 1:
            what = f"trial {self.trials[0]} marked FAIL"
        else:
            what = f"trials {', '.join(map(str, self.trials))} marked FAIL"
        super().__init__(f"interrupted: {what}; re-run the same command to resume")


class InterruptGuard:
    """Installs SIGINT/SIGTERM handlers for its ``with`` block (main thread only; elsewhere it
    is inert). ``immediate`` starts True (raise at once, e.g. while the engine is prepared);
    the runner turns it off around the optimize loop and the objective back on around
    evaluation with :meth:`raising`."""

    def __init__(self) -> None:
        self.pending: int | None = None
        self.immediate = True
        self._fired = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.pending is not None:
            return
        self.pending = signum
        if self.immediate:
            self._fired = True
            raise Interrupted(signum)

    def check(self) -> None:
        """Raise the recorded signal (once), at a point where abandoning the trial is clean."""
        if self.pending is not None and not self._fired:
            self._fired = True
            raise Interrupted(self.pending)

    @contextmanager
    def raising(self) -> Iterator[None]:
        """Inside this block a signal raises at once (a pending one is raised on entry)."""
        self.check()
        previous, self.immediate = self.immediate, True
        try:
            yield
        finally:
            self.immediate = previous

    @contextmanager
    def deferred(self) -> Iterator[None]:
        previous, self.immediate = self.immediate, False
        try:
            yield
        finally:
            self.immediate = previous
