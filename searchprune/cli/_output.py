"""Where output goes: data (``--json``) to stdout, everything for people to stderr."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from searchprune.redact import redact_text

__all__ = ["add_trust_flag", "console", "emit_json", "error", "jsonable", "table"]

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
