"""zero-fuse's in-memory view of inodes and open handles.

zero-fuse is the only writer of the namespace, so its memory is the truth
and the database is written through. Size and times change on every write;
they are kept here and flushed in batches (and on close and fsync), and the
mount-time reconciler recovers sizes from chunk files after a crash.
"""

from __future__ import annotations

import stat
import threading
from dataclasses import dataclass

ATTR_FIELDS = ("mode", "uid", "gid", "nlink", "size", "atime_ns", "mtime_ns", "ctime_ns", "rdev")
# An inode's unwritten chunks while it has none, shared: an empty set costs 216
# bytes, a quarter of an idle inode, and only a file just created has one.
NO_CHUNKS: frozenset[int] = frozenset()


class Inode:
    __slots__ = ("ino", "mode", "uid", "gid", "nlink", "size", "atime_ns", "mtime_ns", "ctime_ns", "rdev",
                 "target", "lock", "open_handles", "write_handles", "leases", "unwritten", "attrs_unflushed",
                 "attrs_version", "last_read_end", "last_write_end", "xattrs", "allocated_bytes", "allocated_at", "used")

    def __init__(self, row):
        self.ino = row.ino
        for name in ATTR_FIELDS:
            setattr(self, name, getattr(row, name))
        self.target = row.target
        self.lock = threading.RLock()   # serialises data changes (write, truncate, lease moves)
        self.open_handles = 0
        self.write_handles = 0
        self.leases: dict[int, float] = {}  # chunk idx -> monotonic time of the last write under the lease
        # Leased in advance (a new file's first chunk, in the create's commit) and not written yet.
        self.unwritten: set[int] | frozenset[int] = NO_CHUNKS
        self.attrs_unflushed = False
        self.attrs_version = 0  # bumped by each change, so a flush knows whether it wrote the newest
        self.last_read_end = 0  # a read from the start counts as sequential
        self.last_write_end = 0  # likewise a write
        # Loaded on first use. The kernel asks for security.capability before
        # every write, so this must not cost a database read each time.
        self.xattrs: dict[bytes, bytes] | None = None
        # Disk bytes its chunk files hold (st_blocks), measured on demand by the data path.
        self.allocated_bytes: int | None = None
        self.allocated_at = 0.0
        self.used = 0  # Tree's tick of the last operation that took it: idle ones may be let go

    def written(self, idx: int) -> None:
        """Chunk ``idx`` is no longer leased in advance: it has its file, or went."""
        if idx in self.unwritten:
            self.unwritten.discard(idx)
            if not self.unwritten:
                self.unwritten = NO_CHUNKS  # the set goes with its last chunk

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)

    def attrs(self) -> dict:
        return {name: getattr(self, name) for name in ATTR_FIELDS}

    def stat(self, block_size: int, allocated_bytes: int | None = None) -> dict:
        """st_* for getattr; ``allocated_bytes`` (a regular file's real disk use)
        gives st_blocks, else the size does."""
        return {
            "st_ino": self.ino,
            "st_mode": self.mode,
            "st_uid": self.uid,
            "st_gid": self.gid,
            "st_nlink": self.nlink,
            "st_size": self.size,
            "st_atime": self.atime_ns,
            "st_mtime": self.mtime_ns,
            "st_ctime": self.ctime_ns,
            "st_rdev": self.rdev,
            "st_blksize": block_size,
            "st_blocks": ((self.size if allocated_bytes is None else allocated_bytes) + 511) // 512,
        }


@dataclass
class Handle:
    inode: Inode
    flags: int
    writable: bool
    append: bool
    is_dir: bool = False
