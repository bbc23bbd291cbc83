"""Where searchprune keeps derived files (trained baselines, scores, downloaded data sets).

A cache folder may be shared with other local users (``SEARCHPRUNE_CACHE`` on a team disk), so
nothing in it is trusted by name:

* every folder from the cache root down to the file is opened and checked on its open
  descriptor (``fstat``): it must belong to this user (or root), and a folder other users can
  write to must also be sticky and this user's own (others can then add files but not rename or
  replace this user's). Subfolders are opened with ``O_NOFOLLOW``, each relative to the
  checked one above it, so no folder can be swapped between the check and the use;
* a cached file is opened with ``O_NOFOLLOW`` relative to that checked folder, then the *open*
  file is checked (a regular file, owned by this user, readable by them, writable by no one
  else) and read from that same descriptor: swapping the name for a symbolic link or for
  another file before the open is refused, after it changes nothing that is read;
* writes go to a fresh ``O_EXCL`` temporary file in the checked folder, renamed into place.

A refused folder or file is never read (nor written, for a folder): one warning line says why and
how to fix it, and the caller recomputes. A warning rather than an error because the cache only
saves time: recomputing gives the correct result, so a misconfigured shared folder costs time
but never correctness. Cached files are always loaded weights-only besides.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["CacheFolder", "atomic_save", "cache_folder", "default_cache_dir",
           "make_private_dir", "open_cache_file", "usable_cache_file"]

_log = logging.getLogger(__name__)

_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted under a cache file's name must not block the open.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


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


# -- checks on open descriptors -------------------------------------------------------------
def folder_problem(st: os.stat_result) -> str | None:
    """Why a folder with this ``fstat`` cannot hold this user's cache (and what to do), or None
    when it can."""
    me = os.getuid()
    if st.st_uid not in (me, 0):
        return (f"owned by uid {st.st_uid}, not by this user; point SEARCHPRUNE_CACHE at a "
                "folder of your own")
    mode = stat.S_IMODE(st.st_mode)
    if mode & _OTHERS_WRITE and not (mode & stat.S_ISVTX and st.st_uid == me):
        return (f"other users can write to it (mode {mode:04o}) and it is not a sticky folder "
                "of this user's; chmod 700 it (chmod 1777 if it must stay shared), or point "
                "SEARCHPRUNE_CACHE at a private folder")
    return None


def file_problem(st: os.stat_result) -> str | None:
    """Why an open cache file with this ``fstat`` must not be used, or None when it can."""
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_uid != os.getuid():
        return f"owned by uid {st.st_uid}, not by this user"
    mode = stat.S_IMODE(st.st_mode)
    if not mode & stat.S_IRUSR:
        return "not readable"
    if mode & _OTHERS_WRITE:
        return f"writable by other users (mode {mode:04o})"
    return None


def _warn_folder(path: Path, why: str) -> None:
    _log.warning("not using cache folder %s (computing without the cache): %s", path, why)


def _warn_file(path: Path, why: str) -> None:
    _log.warning("ignoring cache file %s: %s; recomputing it", path, why)


class CacheFolder:
    """A checked cache folder, held open: files are read and written relative to it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd = path, fd

    def open(self, name: str) -> IO[bytes] | None:
        """The cached file ``name`` opened for reading, or None: missing, or refused (a
        symbolic link, another user's file, ...: one warning line, the caller recomputes)."""
        path = self.path / name
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=self.fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            why = ("a symbolic link" if exc.errno == errno.ELOOP
                   else "not readable" if exc.errno == errno.EACCES
                   else exc.strerror or str(exc))
            _warn_file(path, why)
            return None
        try:
            why = file_problem(os.fstat(fd))
            if why is None:
                os.set_blocking(fd, True)
                return open(str(path), "rb", opener=lambda _p, _f: fd)  # reads this descriptor
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        _warn_file(path, why)
        return None

    def save(self, obj: Any, name: str) -> None:
        """``torch.save(obj)`` to a new ``O_EXCL`` temporary file (mode 0600) in this folder,
        then renamed to ``name``: a crash leaves the old file or the new one, never a
        truncated one, and no name another user planted is ever written through."""
        import torch

        tmp, fd = _exclusive_temp(self.fd, name)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self.fd)
            raise

    def close(self) -> None:
        os.close(self.fd)


def _exclusive_temp(dir_fd: int, name: str) -> tuple[str, int]:
    """A new file ``.<name>.<random>.tmp`` in the folder (mode 0600, ``O_EXCL``): (name, fd)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        tmp = f".{name}.{os.urandom(6).hex()}.tmp"
        try:
            return tmp, os.open(tmp, flags, 0o600, dir_fd=dir_fd)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", name)


def _subfolder(parent: int, part: str, create: bool) -> int | None:
    """Open folder ``part`` of the open folder ``parent`` without following a link (made 0700
    when missing and ``create``); None when missing. Raises OSError (ELOOP: a link)."""
    try:
        return os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent)
    except FileNotFoundError:
        if not create:
            return None
    with contextlib.suppress(FileExistsError):  # another worker made it first
        os.mkdir(part, 0o700, dir_fd=parent)
    return os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent)


def _open_checked(root: Path, parts: tuple[str, ...], create: bool) -> CacheFolder | None:
    """``root/parts...`` opened step by step, each folder checked on its descriptor; None when
    missing (and not ``create``) or refused (one warning line)."""
    if create:
        make_private_dir(root)
    path, fd = root, None
    try:
        fd = os.open(root, _DIR_FLAGS)  # the root may be a link: it is checked once open
        why = folder_problem(os.fstat(fd))
        for part in parts:
            if why is not None:
                break
            parent, path = fd, path / part
            fd = None
            try:
                fd = _subfolder(parent, part, create)
            finally:
                os.close(parent)
            if fd is None:
                return None
            why = folder_problem(os.fstat(fd))
    except FileNotFoundError:
        why = None if not create else "it vanished while being opened"
    except OSError as exc:
        why = ("it is a symbolic link" if exc.errno == errno.ELOOP
               else "it is not a folder" if exc.errno == errno.ENOTDIR
               else exc.strerror or str(exc))
    if why is None and fd is not None:
        return CacheFolder(path, fd)
    if fd is not None:
        os.close(fd)
    if why is not None:
        _warn_folder(path, why)
    return None


@contextlib.contextmanager
def cache_folder(root: str | Path, *parts: str, create: bool = True
                 ) -> Iterator[CacheFolder | None]:
    """The cache folder ``root/parts...``, checked (see the module docstring) and held open
    while the block runs; None when it is refused (one warning line: compute without the cache,
    and store nothing) or, without ``create``, missing."""
    folder = _open_checked(Path(root).expanduser(), parts, create)
    try:
        yield folder
    finally:
        if folder is not None:
            folder.close()


def open_cache_file(path: str | Path, root: str | Path | None = None) -> IO[bytes] | None:
    """``path`` opened for reading as :meth:`CacheFolder.open` does, every folder from ``root``
    (default: the file's own folder) down to it checked; None when missing or refused."""
    path = Path(path).expanduser()
    base = Path(root).expanduser() if root is not None else path.parent
    with cache_folder(base, *path.parent.relative_to(base).parts, create=False) as folder:
        return folder.open(path.name) if folder is not None else None


def usable_cache_file(path: str | Path) -> bool:
    """True when :func:`open_cache_file` would use ``path`` (a warning line says why not)."""
    f = open_cache_file(path)
    if f is None:
        return False
    f.close()
    return True


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
