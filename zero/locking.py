"""One process of each role per cache: an fcntl lock on a pid file.

The kernel drops the lock when the holder dies, even by kill -9, so a stale
lock never blocks a restart.
"""

from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

from zero.errors import CacheLocked


class PidLock:
    def __init__(self, path: Path, role: str):
        self.path = Path(path)
        self.role = role
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise CacheLocked(
                f"the cache {self.path.parent} is already used by another {self.role} (pid {holder}); "
                f"stop that process first (kill {holder}) or use another cache folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# struct flock on Linux (x86_64 and aarch64): l_type, l_whence, l_start, l_len, l_pid.
_FLOCK = struct.Struct("@hhqqi4x")


def holder_pid(path: Path) -> int | None:
    """The pid holding the lock, or None when nobody does.

    Asks the kernel (F_GETLK) rather than trying the lock: taking it, even for
    an instant, made a process starting at that moment fail as "locked"."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        probe = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        l_type, _, _, _, pid = _FLOCK.unpack(fcntl.fcntl(fd, fcntl.F_GETLK, probe))
        return None if l_type == fcntl.F_UNLCK else pid
    finally:
        os.close(fd)


class HeldLock:
    """An flock on a file, held for as long as an activity runs (a garbage collection):
    others ask ``is_held`` whether it still runs. The kernel drops it when its holder
    dies, in whatever pid namespace either process runs, which a pid cannot tell."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        # Read-only is enough for flock: a lock file made by a root `zero gc` still works for the worker.
        fd = os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def is_held(path: Path) -> bool:
    """Whether some process (this one too, through another HeldLock) holds the flock on ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False  # nobody holds it (the shared lock goes with the descriptor)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
