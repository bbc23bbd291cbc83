"""Known exceptions -> one line on stderr and an exit code; ``--debug`` shows the traceback."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from searchprune.cli._output import error
from searchprune.errors import SearchpruneError

__all__ = ["EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "run_guarded"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def run_guarded(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run ``command(args)``; map the errors a user can fix to ``error: ...`` and an exit code."""
    import optuna
    import sqlalchemy.exc

    try:
        return command(args)
    except Exception as exc:
        if args.debug:
            raise
        if isinstance(exc, SearchpruneError):
            error(str(exc))
            return exc.exit_code
        if isinstance(exc, FileNotFoundError):
            error(f"file not found: {exc.filename or exc}")
            return EXIT_FAILURE
        if isinstance(exc, (sqlalchemy.exc.SQLAlchemyError,
                            optuna.exceptions.StorageInternalError)):
            error(f"storage error: {str(exc).splitlines()[0]}; rerun with --debug for details")
            return EXIT_FAILURE
        raise
    except KeyboardInterrupt:
        error("interrupted; a study continues where it stopped when run again")
        return EXIT_INTERRUPTED
