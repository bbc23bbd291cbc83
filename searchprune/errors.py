"""Exceptions that carry a one-line, user-facing message (the CLI prints them without a traceback)."""

from __future__ import annotations

__all__ = [
    "BandError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ModelError",
    "SearchpruneError",
    "StorageError",
    "StudyConfigMismatch",
]


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
