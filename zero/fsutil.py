"""File-system helpers every part of zero shares: a leaf, importing only the stdlib.

One durable-write helper (temporary file, fsync, rename, fsync the folder)
serves chunk fault-ins and the local remote alike; the database commits after.
"""

from __future__ import annotations

import os
import re
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


def settled_bytes(st: os.stat_result, block: int) -> int:
    """What a file just written will occupy, for a figure recorded once and trusted
    after (a clean chunk's, decision 111): its allocated bytes, and never less than
    its size in whole ``block``s. Some file systems count a write's blocks only
    later (ZFS when its transaction group commits), so st_blocks read right after
    the write can be a fraction of what the file will take. A sparse file counts
    as dense instead: more than it takes, which only makes eviction come early."""
    return max(disk_bytes(st), -(-st.st_size // block) * block)


def durable_write(path: str, data: bytes, tmp_dir: str | None = None) -> None:
    """Write a file so that after return it exists whole or not at all:
    temp file, fsync, rename, fsync the folder."""
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
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, path)
    fsync_dir(folder)


def fsync_dir(folder: str) -> None:
    """Make a folder's entries (a rename, a new file) survive a power cut."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def zero_mounts(path: str | os.PathLike) -> list[tuple[int, str]]:
    """(mount id, device "major:minor") of each zero mount on ``path``, live or
    dead, in the order /proc/self/mountinfo lists them (the newest last)."""
    where = os.fsencode(os.path.abspath(path))
    found = []
    with open("/proc/self/mountinfo", "rb") as table:
        for line in table:
            # "<id> <parent> <major:minor> <root> <mount point> <options> [optional...] - <type> <source> ..."
            fields, _, tail = line.partition(b" - ")
            fields, tail = fields.split(), tail.split()
            point = re.sub(rb"\\([0-7]{3})", lambda match: bytes([int(match.group(1), 8)]), fields[4])
            if tail and tail[0] == b"fuse.zero" and point == where:
                found.append((int(fields[0]), fields[2].decode()))
    return found
