"""Where output goes: data (``--json``) to stdout, everything for people to stderr."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from searchprune.redact import redact_text

if TYPE_CHECKING:
    from searchprune.trust import LocalTrust

__all__ = ["add_stored_trust_flags", "add_trust_flag", "console", "emit_json", "error", "jsonable", "stored_trust", "table"]

console = Console(stderr=True)


def jsonable(value: Any) -> Any:
    """Plain JSON data: non-finite floats become null, tuples lists, other objects strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def emit_json(data: Any) -> None:
    sys.stdout.write(redact_text(json.dumps(jsonable(data), indent=2, allow_nan=False)) + "\n")
    sys.stdout.flush()


def error(message: str) -> None:
    """One line on stderr (no rich wrapping, so scripts can grep it)."""
    sys.stderr.write(f"error: {' '.join(redact_text(message).split())}\n")


def add_trust_flag(parser: Any) -> None:
    """``--trust-checkpoint``: override ``model.trust_checkpoint`` (None when not given)."""
    parser.add_argument("--trust-checkpoint", action="store_const", const=True, default=None,
                        help="load model.checkpoint with full unpickling, which can run code "
                             "from the file (only for files you trust)")


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    t = Table(title=title, title_justify="left", show_header=any(columns))
    for col in columns:
        t.add_column(col)
    for row in rows:
        t.add_row(*("-" if v is None else str(v) for v in row))
    console.print(t)


def add_stored_trust_flags(parser: Any) -> None:
    """What this command may do with the study's stored config, which anyone who can write to
    the storage may have edited: import a ``package.module:factory`` it names
    (``--allow-factory``), unpickle its ``model.checkpoint`` (``--trust-checkpoint PATH``: the
    user names the file, the study's say-so is not enough)."""
    parser.add_argument("--trust-checkpoint", default=None, metavar="PATH",
                        help="load the study's model.checkpoint with full unpickling, which "
                             "can run code from the file; PATH must be that same file (only "
                             "for files you trust)")
    parser.add_argument("--allow-factory", action="append", default=[], metavar="MODULE:FN",
                        help="import this package.module:factory if the study's config names "
                             "it (model, search.sampler, pruning.criterion); repeatable")


def stored_trust(args: Any) -> LocalTrust:
    from searchprune.trust import LocalTrust

    return LocalTrust(factories=frozenset(args.allow_factory),
                      checkpoint=args.trust_checkpoint)
