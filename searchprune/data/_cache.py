"""Where searchprune keeps derived files (trained baselines, scores, downloaded data sets).

Cache folders are created with mode 0700 (only this user can plant files there), and a cached
file is used only when this user owns it and can read it; anything else is ignored with a
one-line warning and recomputed. Cached files are always loaded weights-only.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_save", "default_cache_dir", "make_private_dir", "usable_cache_file"]

_log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$SEARCHPRUNE_CACHE`` if set, else ``~/.cache/searchprune``."""
    env = os.environ.get("SEARCHPRUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "searchprune"


def make_private_dir(path: Path) -> Path:
    """Create ``path`` and its missing parents with mode 0700; return it."""
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:  # another worker made it first
            pass
    return path


def usable_cache_file(path: Path) -> bool:
    """True when ``path`` is a regular file this user owns and can read. A file planted by
    another user, or an unreadable one, gets a one-line warning and is not used."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    except OSError as exc:
        _log.warning("ignoring cache file %s (%s); recomputing it", path, exc.strerror or exc)
        return False
    if st.st_uid != os.getuid():
        _log.warning("ignoring cache file %s: owned by uid %d, not by this user; recomputing it",
                     path, st.st_uid)
        return False
    if not os.access(path, os.R_OK):
        _log.warning("ignoring cache file %s: not readable; recomputing it", path)
        return False
    return path.is_file()


def atomic_save(obj: Any, path: Path, *, private: bool = False) -> None:
    """``torch.save(obj)`` to a temporary file next to ``path``, then rename it into place: a
    crash leaves the old file or the new one, never a truncated one."""
    import torch

    if private:
        make_private_dir(path.parent)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
