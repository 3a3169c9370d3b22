"""File-system helpers every part of zero shares: a leaf, importing only the stdlib.

One durable-write helper (temporary file, fsync, rename, fsync the folder)
serves chunk fault-ins and the local remote alike; the database commits after.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import threading


# Files zero makes hold keys, every file name and the cached data: owner-only,
# as ssh keeps its keys.
PRIVATE_UMASK = 0o077


def keep_private() -> None:
    """From now on everything this process creates (the cache folder, the state
    and its WAL, chunk files, key files, logs, locks) is readable by its owner only."""
    os.umask(PRIVATE_UMASK)


def others_can_access(path: str | os.PathLike) -> bool:
    """True if users other than the owner have any permission on ``path``."""
    return bool(os.stat(path).st_mode & 0o077)


def disk_bytes(st: os.stat_result) -> int:
    """Bytes a file really occupies (holes take none)."""
    return st.st_blocks * 512


def durable_write(path: str, data: bytes, tmp_dir: str | None = None, sync: bool = True) -> None:
    """Write a file so that after return it exists whole or not at all:
    temp file, fsync, rename, fsync the folder. With ``sync`` off the
    rename still makes it whole or absent after a crash of the process, but
    it survives a power cut only once the caller syncs the file system
    (sync_file_system)."""
    folder = os.path.dirname(path)
    # pid, thread and a random part: two writers of one path never share a temp file
    tmp = os.path.join(tmp_dir or folder,
                       f".tmp-{os.getpid()}-{threading.get_ident()}-{secrets.token_hex(4)}-{os.path.basename(path)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, path)
    if sync:
        fsync_dir(folder)


def fsync_dir(folder: str) -> None:
    """Make a folder's entries (a rename, a new file) survive a power cut."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# File systems whose syncfs() writes back every file's data and every folder
# entry and flushes the disk's cache, as fsync of each would. Elsewhere (a
# FUSE mount such as sshfs, which never hears of a syncfs) each file is synced.
_SYNCFS_TRUSTED = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "jfs", "tmpfs"})
_libc = ctypes.CDLL(None, use_errno=True)


def file_system_type(path: str) -> str:
    """The type of the file system ``path`` is on ("ext4", "nfs4", "fuse.sshfs"),
    from the longest mount point that contains it; "" if none is found."""
    path = os.path.realpath(path)
    best, kind = "", ""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mounts:
        for line in mounts:
            fields, _, rest = line.partition(" - ")
            point = fields.split()[4].replace("\\040", " ")
            inside = path == point or path.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, kind = point, rest.split()[0]
    return kind


def syncfs_is_trusted(path: str) -> bool:
    return file_system_type(path) in _SYNCFS_TRUSTED


def sync_file_system(path: str) -> None:
    """syncfs(2) on the file system holding ``path``: whatever was written there
    before, by any file, is on the disk after return. OSError on a write-back error."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error), path)
    finally:
        os.close(fd)
