"""The one place that turns ``--storage``, ``SEARCHPRUNE_STORAGE`` or nothing into a storage."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from searchprune.errors import StorageError
from searchprune.redact import redact_url, remember

__all__ = ["DEFAULT_STORAGE", "ENV_VAR", "get_storage", "resolve_storage_url"]

ENV_VAR = "SEARCHPRUNE_STORAGE"
DEFAULT_STORAGE = "sqlite:///studies/searchprune.db"


def resolve_storage_url(url_or_path: str | None) -> str:
    """The flag, else ``$SEARCHPRUNE_STORAGE``, else ``studies/searchprune.db``; a plain file path
    becomes a SQLite URL. The folder of a SQLite file is created. URLs are used as given:
    ``postgresql://`` means psycopg 3 (SQLAlchemy 2.1's default), ``postgresql+psycopg2://``
    the optional psycopg2 driver."""
    value = url_or_path or os.environ.get(ENV_VAR) or DEFAULT_STORAGE
    remember(value)
    if "://" not in value:
        value = f"sqlite:///{Path(value).expanduser().resolve()}"
    if value.startswith("sqlite:///") and value != "sqlite:///:memory:":
        _check_sqlite_path(Path(value[len("sqlite:///"):]))
    return value


def _check_sqlite_path(path: Path) -> None:
    """Create the folder of a SQLite file; one-line :class:`StorageError` when that fails or
    when the file or its folder is not writable (the journal and the lock file live there)."""
    above = next(p for p in path.parents if p.exists())
    if not above.is_dir():
        raise StorageError(f"cannot create the storage folder {path.parent}: {above} is a file, "
                           "not a folder; choose another --storage path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # no permission, read-only file system...
        raise StorageError(f"cannot create the storage folder {path.parent}: "
                           f"{exc.strerror or exc}; choose another --storage path") from None
    target = path if path.exists() else path.parent
    if path.is_dir() or not os.access(target, os.W_OK):
        what = "a folder" if path.is_dir() else "not writable"
        raise StorageError(f"storage {target} is {what}; choose another --storage path")
    if target != path.parent and not os.access(path.parent, os.W_OK):
        raise StorageError(f"storage folder {path.parent} is not writable (SQLite and the study "
                           "lock write files next to the database); choose another --storage "
                           "path or make the folder writable")


def get_storage(url_or_path: str | None, *, heartbeat_interval: int | None = 30,
                grace_period: int | None = 120, max_retry: int = 2) -> RDBStorage:
    """An RDB storage with heartbeats: a killed worker's trial FAILs after ``grace_period``
    seconds and is retried (up to ``max_retry`` times) by the next worker.

    Raises:
        StorageError: the URL is invalid or the server cannot be reached.
    """
    url = resolve_storage_url(url_or_path)
    _check_driver(url)
    engine_kwargs = ({"connect_args": {"connect_timeout": 10}} if url.startswith("postgres")
                     else None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            callback = (RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
                        if heartbeat_interval else None)
            storage = RDBStorage(url, engine_kwargs=engine_kwargs,
                                 heartbeat_interval=heartbeat_interval,
                                 grace_period=grace_period if heartbeat_interval else None,
                                 heartbeat_stale_trial_callback=callback)
            if url.startswith("sqlite:///") and ":memory:" not in url:
                _fast_sqlite(storage)
            return storage
    except Exception as exc:  # SQLAlchemy raises many types for one cause: a bad URL or server
        raise StorageError(f"cannot open storage URL: {_reason(exc)} ({redact_url(url)}); "
                           "check the URL and that the server is running") from exc


def _fast_sqlite(storage: RDBStorage) -> None:
    """Write-ahead logging with ``synchronous=NORMAL``: a commit no longer waits for an fsync
    (a trial makes a few dozen small writes), and readers do not block the writer. A crash of
    the machine (not of a worker) may lose the last commits; the database stays consistent."""
    from sqlalchemy import event

    def pragmas(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(storage.engine, "connect", pragmas)
    storage.engine.dispose()  # connections opened before the listener reconnect with it


def _check_driver(url: str) -> None:
    """A URL that names a database driver which is not installed fails in one line that says
    what to install (e.g. ``postgresql+psycopg2://`` without the ``psycopg2`` extra)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
        parsed.get_dialect().import_dbapi()
    except (ArgumentError, NoSuchModuleError):
        if url.startswith("postgres://"):
            raise StorageError("SQLAlchemy does not know the scheme postgres://; write "
                               "postgresql://") from None
        return  # not a URL SQLAlchemy knows: RDBStorage reports it with the usual message
    except ValueError as exc:  # e.g. a port that is not a number
        reason = "its port is not a number" if "int()" in str(exc) else _reason(exc)
        raise StorageError(f"invalid storage URL {redact_url(url)}: {reason}; write it as "
                           "postgresql://user@host:5432/database") from None
    except ImportError as exc:
        driver = parsed.drivername
        hint = (" (pip install 'searchprune[psycopg2]', or use postgresql://, which uses "
                "psycopg 3)" if "psycopg2" in driver else "")
        raise StorageError(f"the storage URL asks for the '{driver}' driver, whose module "
                           f"'{exc.name}' is not installed{hint}") from exc


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    cause = str(exc.__cause__ or "").strip()
    if cause and cause.splitlines()[0] not in text:
        text += f" ({cause.splitlines()[0]})"
    return text


