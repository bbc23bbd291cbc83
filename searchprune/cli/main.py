"""``searchprune``: the entry point (``searchprune = searchprune.cli.main:main``)."""

from __future__ import annotations

import argparse
import logging
import sys

from searchprune import __version__
from searchprune.cli import (
    compare,
    criteria,
    dashboard,
    finish,
    model,
    sensitivity,
    study,
    supernet,
)
from searchprune.cli._errors import EXIT_USAGE, run_guarded
from searchprune.redact import RedactingFilter

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    parser = argparse.ArgumentParser(
        prog="searchprune",
        description="Find the best channel configuration of a pruned CNN with Optuna.")
    parser.add_argument("--version", action="version", version=f"searchprune {__version__}")
    sub = parser.add_subparsers(
        dest="command", metavar="{study,compare,criteria,sensitivity,model,supernet,finetune,export,dashboard}")
    study.add_parser(sub, common)
    model.add_parser(sub, common)
    supernet.add_parser(sub, common)
    finish.add_parser(sub, common)
    criteria.add_parser(sub, common)
    compare.add_parser(sub, common)
    sensitivity.add_parser(sub, common)
    dashboard.add_parser(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    _quiet_libraries(args.debug)
    return run_guarded(args.func, args)


def _quiet_libraries(debug: bool) -> None:
    """Optuna logs every trial at INFO; the progress bar and summary replace that."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.DEBUG if debug else optuna.logging.WARNING)
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # storage passwords never reach a log line
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


if __name__ == "__main__":
    sys.exit(main())
