"""Exceptions that carry a one-line, user-facing message (the CLI prints them without a traceback)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "BandError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ModelError",
    "SearchpruneError",
    "StorageError",
    "StudyConfigMismatch",
    "UntrustedCheckpointError",
    "did_you_mean",
    "exception_line",
    "unknown_choice",
]


def did_you_mean(value: object, valid: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest valid name, or an empty string."""
    close = difflib.get_close_matches(str(value), list(valid), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_choice(what: str, value: object, valid: Iterable[str]) -> str:
    """``unknown <what> '<value>' (did you mean 'x'?); choose one of: a, b, c``."""
    names = list(valid)
    return f"unknown {what} '{value}'{did_you_mean(value, names)}; choose one of: {', '.join(names)}"


def exception_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message`` (``(no message)`` when it is empty), at most ``limit``
    characters: how a failed trial or a last-resort error names its cause in one line."""
    lines = str(exc).strip().splitlines()
    first = lines[0].strip() if lines else ""
    text = f"{type(exc).__name__}: {first or '(no message)'}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


class SearchpruneError(Exception):
    """Base class: the message says what to fix."""

    exit_code = 1


class ConfigError(SearchpruneError):
    """Malformed YAML, unknown keys, values out of range."""

    exit_code = 2


class ModelError(SearchpruneError):
    """Unknown model name or a factory that cannot be imported."""

    exit_code = 2


class CheckpointError(SearchpruneError):
    """Missing, truncated or mismatching checkpoint file."""


class UntrustedCheckpointError(CheckpointError):
    """A checkpoint that only full unpickling (which can run code from the file) would load,
    refused for want of an opt-in; ``path`` is the file, so a command can say how it allows
    that file."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class DataError(SearchpruneError):
    """Dataset path missing, empty, or unknown dataset name."""


class StorageError(SearchpruneError):
    """Storage URL unreachable or invalid."""


class BandError(SearchpruneError):
    """The FLOPs band cannot be reached by any configuration."""

    exit_code = 2


class StudyConfigMismatch(SearchpruneError):
    """A study with this name exists with a different configuration."""

    exit_code = 2
