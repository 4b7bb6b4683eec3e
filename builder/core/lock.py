"""The writer lock: one process at a time writes a library, even when ``.lock`` is deleted.

A writer takes two ``flock`` locks and holds them for its whole life:

1. on the **library folder itself** (an ``O_DIRECTORY`` descriptor of its root): the lock that
   decides.  A folder is not deleted by accident while it holds a library, and deleting or
   replacing ``.lock`` does not touch it, so a second writer is refused even then (when the lock
   lived on ``.lock`` alone, deleting the file let a second writer in, whose open emptied
   ``temp/`` under a running harvest);
2. on ``.lock``, which also holds the writer's pid for messages, so that a builder of an older
   version, which locks ``.lock`` only, and this one still exclude each other.

``flock`` locks belong to the open file description, not to a path or to ``fcntl`` byte
ranges: on Linux they are independent of the POSIX locks SQLite takes on ``tiles.db`` and its
``-shm``, and a process pool forked by the writer shares them (they go when the last of its
descriptors closes, i.e. when the writer and its workers are gone, SIGKILL included).

Standard library only.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import LibraryError, LibraryLocked, UnsafePath
from .layout import LOCK_NAME


class WriterLock:
    """The two locks of a writer (see the module docstring); :meth:`release` lets them go."""

    def __init__(self, root: Path, folder_fd: int, file_fd: int) -> None:
        self.root = root
        self._fds: list[int] = [folder_fd, file_fd]

    @classmethod
    def acquire(cls, root: str | os.PathLike) -> WriterLock:
        """Take the writer lock of ``root`` or raise :class:`LibraryLocked` naming the holder."""
        root = Path(root)
        try:
            folder_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise LibraryError(f"cannot lock {root}: {exc.strerror}") from None
        try:
            _lock_or_refuse(folder_fd, root)
            file_fd = _open_lock_file(root)
        except BaseException:
            os.close(folder_fd)
            raise
        try:
            _lock_or_refuse(file_fd, root)
            if not os.access(root, os.W_OK):
                raise LibraryError(f"cannot write to {root}: the library folder is read-only")
            os.ftruncate(file_fd, 0)
            os.pwrite(file_fd, f"pid {os.getpid()}".encode(), 0)
        except BaseException:
            os.close(file_fd)
            os.close(folder_fd)
            raise
        return cls(root, folder_fd, file_fd)

    def release(self) -> None:
        """Let both locks go (idempotent)."""
        while self._fds:
            os.close(self._fds.pop())

    @property
    def held(self) -> bool:
        return bool(self._fds)


def _open_lock_file(root: Path) -> int:
    path = root / LOCK_NAME
    if path.is_symlink():
        raise UnsafePath(f"{path} is a symlink: refusing to write through it")
    try:
        # O_NOFOLLOW: the pid is written into this file; never through a planted symlink.
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except PermissionError:
        raise LibraryError(f"cannot write to {root}: the library folder is read-only") from None
    except OSError as exc:
        raise LibraryError(f"cannot lock {root}: {exc.strerror}") from None


def _lock_or_refuse(fd: int, root: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise LibraryLocked(f"{root} is being written by {holder(root)}; wait for it to finish and retry") from None


def holder(root: Path) -> str:
    """Who holds the writer lock, for messages: the process the kernel lists as holding the
    folder's lock (Linux ``/proc/locks``), else the pid ``.lock`` names, else "another process"."""
    pid = _folder_lock_pid(root)
    if pid:
        return f"pid {pid}"
    try:
        fd = os.open(root / LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return "another process"
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    finally:
        os.close(fd)
    return text if text.startswith("pid ") and text[4:].isdigit() else "another process"


def _folder_lock_pid(root: Path) -> int | None:
    """The pid ``/proc/locks`` gives for an exclusive ``flock`` on ``root``'s inode, if any."""
    try:
        info = os.stat(root)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    inode = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 4242 08:01:1234 0 EOF"; blocked waiters have "->" after the number.
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[3] == "WRITE" and fields[5] == inode:
            return int(fields[4]) if fields[4].isdigit() else None
    return None


def writer_active(root: str | os.PathLike) -> bool:
    """True while a process holds the writer lock of ``root`` (a harvest or ingest is running).

    Asks both locks: the folder's, and ``.lock``'s for a builder of an older version."""
    root = Path(root)
    for path, flags in ((root, os.O_RDONLY | os.O_DIRECTORY), (root / LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW)):
        try:
            fd = os.open(path, flags | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
    return False
