"""Writing into a model folder safely: a file is whole or absent under its
name, and one process at a time writes into a folder."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from picogpt2.util.errors import InputError
from picogpt2.util.status import status

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent first runs are not guarded
    fcntl = None

LOCK_FILE = ".lock"
# What writing into a folder that cannot be written fails with.
READ_ONLY_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)


def is_read_only(error: OSError) -> bool:
    """The error says the folder (or file) cannot be written."""
    return error.errno in READ_ONLY_ERRNOS


def temporary_name(path: Path, suffix: str = ".tmp") -> Path:
    """A name beside ``path`` for what is written before it takes ``path``'s:
    hidden, with a random part, so that it is no file of the user's."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix}")


@contextmanager
def naming(path: Path, *temporary: Path) -> Iterator[None]:
    """An ``OSError`` about one of our ``temporary`` names (or about no file:
    a full disk's own message) names ``path``, the file asked for, instead."""
    try:
        yield
    except OSError as e:
        if e.filename is None or any(str(t) in (e.filename, e.filename2) for t in temporary):
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise


@contextmanager
def atomic_write(path: Path) -> Iterator[BinaryIO]:
    """A new temporary file beside ``path`` to write; when the block ends
    without error, it is flushed to disk and renamed to ``path``. On any
    error (a full disk, Ctrl-C) it is removed and ``path`` is left as it
    was. The temporary file is created exclusively under a name of its own
    (``temporary_name``), so no file picogpt2 did not create is ever
    replaced, removed or written through (a link to elsewhere included).
    An ``OSError`` names ``path``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    tmp = temporary_name(path)
    created = False
    try:
        with naming(path, tmp):
            fd = os.open(tmp, flags, 0o666)
            created = True
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            created = False
    finally:
        if created:
            tmp.unlink(missing_ok=True)


def require_new(out: Path) -> None:
    """``out`` must not exist yet: what picogpt2 writes never replaces a file
    or folder that is there."""
    if out.exists() or out.is_symlink():
        raise InputError(f"{out} exists: name a new file or folder")


# Within a process the lock is re-entrant (the downloader holds it while it
# converts), and threads take turns through a lock of their own per folder.
_thread_locks: dict[Path, threading.RLock] = {}
_depth: dict[Path, int] = {}
_registry = threading.Lock()


@contextmanager
def atomic_folder(out: Path) -> Iterator[Path]:
    """A new folder ``out``, filled in the block and present only when the
    block ends without error: it is built under a temporary name beside it
    and renamed, and removed on any error. ``out`` must not exist, or be an
    empty folder (then it is replaced)."""
    tmp = temporary_name(out, "")
    created = False
    try:
        with naming(out, tmp):
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()  # exclusively: a name of its own, never one that stands
            created = True
            yield tmp
            if out.is_dir():
                out.rmdir()  # empty: anything else refuses, and nothing is lost
            os.replace(tmp, out)
            created = False
    finally:
        if created:
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def folder_lock(folder: Path, waiting: str) -> Iterator[None]:
    """Hold ``folder``'s lock (its file ``.lock``, the folder created if
    needed) for the block. A process that finds it held says ``waiting`` once
    and waits. If the holder removed the lock file (a failed first download
    removes the folder it made), the waiter starts again on a new one."""
    key = folder.resolve()
    with _registry:
        thread_lock = _thread_locks.setdefault(key, threading.RLock())
    with thread_lock:
        if _depth.get(key):
            _depth[key] += 1
            try:
                yield
            finally:
                _depth[key] -= 1
            return
        with _process_lock(folder, waiting):
            _depth[key] = 1
            try:
                yield
            finally:
                _depth[key] = 0


@contextmanager
def _process_lock(folder: Path, waiting: str) -> Iterator[None]:
    if fcntl is None:
        folder.mkdir(parents=True, exist_ok=True)
        yield
        return
    while True:
        folder.mkdir(parents=True, exist_ok=True)
        # Never through a link: the lock file is created in the folder itself.
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(folder / LOCK_FILE, flags, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                status(waiting)
                fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_nlink == 0:  # removed while we waited
                continue
            yield
            return
        finally:
            os.close(fd)


def lock_holder(path: Path) -> int | None:
    """The process that holds a lock on the file ``path``, from Linux's
    /proc/locks (None elsewhere, or when none is found)."""
    try:
        stat = path.stat()
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    device = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    holders = {}
    for line in lines:  # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"; waiters have "->"
        parts = line.split()
        if len(parts) > 5 and "->" not in parts and parts[4].isdigit():
            holders[parts[5]] = int(parts[4])
    same_inode = [pid for where, pid in holders.items() if where.endswith(f":{stat.st_ino}")]
    return holders.get(device) or (same_inode[0] if len(same_inode) == 1 else None)
