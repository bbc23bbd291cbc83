"""Known exceptions -> one line on stderr and an exit code; ``--debug`` shows the traceback."""

from __future__ import annotations

import argparse
import signal
import sys
import traceback
from collections.abc import Callable

from searchprune.cli._output import error
from searchprune.errors import SearchpruneError
from searchprune.redact import redact_text

__all__ = ["EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "last_resort",
           "run_guarded"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT; SIGTERM gives 143


def run_guarded(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run ``command(args)``; map the errors a user can fix to ``error: ...`` and an exit code."""
    import optuna
    import sqlalchemy.exc

    from searchprune.search._interrupt import StudyInterrupted

    try:
        return command(args)
    except StudyInterrupted as exc:  # already one line: "interrupted: trial N marked FAIL; ..."
        sys.stderr.write(f"{exc}\n")
        return exc.exit_code
    except Exception as exc:
        if args.debug:  # the traceback, passwords removed
            sys.stderr.write(redact_text(traceback.format_exc()))
            return getattr(exc, "exit_code", EXIT_FAILURE)
        if isinstance(exc, SearchpruneError):
            error(str(exc))
            return exc.exit_code
        if isinstance(exc, FileNotFoundError):
            error(f"file not found: {exc.filename or exc}")
            return EXIT_FAILURE
        if isinstance(exc, (sqlalchemy.exc.SQLAlchemyError,
                            optuna.exceptions.StorageInternalError)):
            error(f"storage error: {_first_line(exc)}; rerun with --debug for details")
            return EXIT_FAILURE
        error(last_resort(exc))  # anything else: still one line, never a traceback
        return EXIT_FAILURE
    except KeyboardInterrupt as exc:  # outside a study run (or a signal the runner did not see)
        signum = getattr(exc, "signum", signal.SIGINT)
        sys.stderr.write("interrupted; a study continues where it stopped when run again\n")
        return 128 + signum


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0].strip() if lines else ""


def last_resort(exc: BaseException) -> str:
    """An exception no handler knows, as one line: its type, the first line of its message and
    how to see the traceback (out of memory adds what to make smaller)."""
    if isinstance(exc, MemoryError):
        detail = "out of memory; lower data.image_size, data.batch_size or data.calib_size"
    else:
        detail = _first_line(exc) or "(no message)"
    return f"{type(exc).__name__}: {detail} (rerun with --debug for the traceback)"
