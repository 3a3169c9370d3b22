"""zero-fuse's in-memory namespace: inodes and directory entries, loaded
from the state on first use and written through on every change.

zero-fuse is the namespace's only writer, so memory is the truth; ``lock``
serialises namespace changes, so checking and applying under it is
race-free. Sizes and times that change on every write are marked
"unflushed" here and written in batches by the flusher.
"""

from __future__ import annotations

import contextlib
import errno
import threading
import time

from zero.fuse.binding import FuseOSError, KernelCache
from zero.fuse.chunkfiles import ChunkFiles
from zero.fuse.inodes import Inode
from zero.fuse.translate import name_bytes, split
from zero.state import namespace
from zero.state.db import Database

HIDDEN_PREFIX = ".fuse_hidden"


def now_ns() -> int:
    return time.time_ns()


class Tree:
    def __init__(self, database: Database, files: ChunkFiles, kernel_cache: KernelCache):
        self.database = database
        self.files = files
        self.kernel_cache = kernel_cache
        self.lock = threading.RLock()
        self.inodes: dict[int, Inode] = {}
        self.children: dict[int, dict[bytes, int]] = {}
        self.hidden: dict[int, dict[bytes, int]] = {}  # parent -> libfuse's names for unlinked open files
        self.unflushed: set[int] = set()
        self._marks = threading.Lock()  # marking changed and marking flushed, never interleaved
        self.used_bytes = 0
        self.inode_count = 0

    # --- loading -----------------------------------------------------------------------

    def inode(self, ino: int) -> Inode:
        inode = self.inodes.get(ino)
        if inode is None:
            with self.database.read() as connection:
                row = namespace.get_inode(connection, ino)
            if row is None:
                raise FuseOSError(errno.ENOENT)
            inode = self.inodes.setdefault(ino, Inode(row))
        return inode

    def entries(self, parent: int) -> dict[bytes, int]:
        entries = self.children.get(parent)
        if entries is None:
            with self.database.read() as connection:
                entries = {name: ino for name, ino, _ in namespace.list_entries(connection, parent)}
            self.children[parent] = entries
        return entries

    def resolve(self, path: str) -> Inode:
        with self.lock:
            inode = self.inode(namespace.ROOT_INO)
            for component in path.split("/"):
                if not component:
                    continue
                if not inode.is_dir:
                    raise FuseOSError(errno.ENOTDIR)
                name = name_bytes(component)
                ino = self.entries(inode.ino).get(name)
                if ino is None:
                    ino = self.hidden.get(inode.ino, {}).get(name)
                if ino is None:
                    raise FuseOSError(errno.ENOENT)
                inode = self.inode(ino)
            return inode

    def parent_and_name(self, path: str) -> tuple[Inode, bytes]:
        parent_path, name = split(path)
        parent = self.resolve(parent_path)
        if not parent.is_dir:
            raise FuseOSError(errno.ENOTDIR)
        return parent, name_bytes(name)

    def is_hidden_name(self, path: str) -> bool:
        """Is ``path`` libfuse's hidden name for an unlinked open file?"""
        parent_path, name = split(path)
        if not name.startswith(HIDDEN_PREFIX):
            return False
        with self.lock:
            parent = self.resolve(parent_path)
            raw = name_bytes(name)
            return raw in self.hidden.get(parent.ino, {}) and raw not in self.entries(parent.ino)

    def is_within(self, ino: int, ancestor: int) -> bool:
        """Is directory ``ino`` the directory ``ancestor`` or below it?"""
        with self.database.read() as connection:
            current: int | None = ino
            while current is not None:
                if current == ancestor:
                    return True
                if current == namespace.ROOT_INO:
                    return False
                current = namespace.parent_of(connection, current)
        return False

    def parent_ino(self, inode: Inode) -> int:
        if inode.ino == namespace.ROOT_INO:
            return namespace.ROOT_INO
        with self.database.read() as connection:
            return namespace.parent_of(connection, inode.ino) or namespace.ROOT_INO

    def listing(self, inode: Inode) -> list[tuple[bytes, int, int]]:
        """(name, ino, mode) of a directory's entries, modes from memory where loaded."""
        with self.lock:
            entries = list(self.entries(inode.ino).items())
            modes = {ino: self.inodes[ino].mode for _, ino in entries if ino in self.inodes}
            if len(modes) < len(entries):
                with self.database.read() as connection:
                    for _, ino, mode in namespace.list_entries(connection, inode.ino):
                        modes.setdefault(ino, mode)
        return [(name, ino, modes.get(ino, 0)) for name, ino in entries]

    # --- writing through ----------------------------------------------------------------

    @contextlib.contextmanager
    def changing(self, *inodes: Inode | None):
        """A write transaction for a change to ``inodes``: if it does not commit
        (a full disk, say), their attributes in memory go back to what they
        were, so memory and the state never disagree."""
        saved = [(inode, inode.attrs(), inode.attrs_unflushed) for inode in inodes if inode is not None]
        try:
            with self.database.write() as connection:
                yield connection
        except BaseException:
            for inode, attrs, unflushed in saved:
                for name, value in attrs.items():
                    setattr(inode, name, value)
                inode.attrs_unflushed = False
                if unflushed:
                    self.mark_unflushed(inode)
            raise

    def persist(self, connection, inode: Inode) -> None:
        """Write ``inode``'s attributes; it counts as flushed only if nothing changed
        them meanwhile. The flusher writes without the locks of those who change
        them (a write, a chmod): a change that lands during the write must stay
        marked, or after an unmount the state keeps the older mode or size."""
        with self._marks:
            seen = inode.attrs_version
        namespace.update_inode(connection, inode.ino, **inode.attrs())
        with self._marks:
            if inode.attrs_version == seen:
                inode.attrs_unflushed = False
                self.unflushed.discard(inode.ino)

    def mark_unflushed(self, inode: Inode) -> None:
        """After changing ``inode``'s attributes in memory: the next batch writes them."""
        with self._marks:
            inode.attrs_version += 1
            inode.attrs_unflushed = True
            self.unflushed.add(inode.ino)

    def touch_dir(self, connection, parent: Inode, now: int) -> None:
        parent.mtime_ns = parent.ctime_ns = now
        self.persist(connection, parent)

    def drop_link(self, connection, inode: Inode, now: int) -> None:
        inode.nlink -= 1
        inode.ctime_ns = now
        self.persist(connection, inode)

    def invalidate_names(self, inode: Inode, except_path: str | None = None) -> None:
        """After a change through one name of a hard-linked file, make the
        kernel forget what it cached under the other names."""
        with self.database.read() as connection:
            paths = namespace.paths_of(connection, inode.ino)
        skip = except_path.encode("utf-8", "surrogateescape") if except_path else None
        for path in paths:
            if path != skip:
                self.kernel_cache.invalidate(path)

    # --- forgetting ------------------------------------------------------------------------

    def purge_if_unused(self, inode: Inode) -> None:
        """Delete an inode's data once no name and no handle keeps it."""
        if inode.nlink > 0 or inode.open_handles > 0:
            return  # the common case, without queueing on the namespace lock
        with self.lock:
            if inode.nlink > 0 or inode.open_handles > 0 or inode.ino not in self.inodes:
                return
            with inode.lock:
                with self.database.write() as connection:
                    indexes = namespace.delete_inode(connection, inode.ino)
                self.forget(inode)
        self.files.delete_later(inode.ino, indexes)

    def forget(self, inode: Inode) -> None:
        """After its rows were deleted; the caller holds ``lock``."""
        del self.inodes[inode.ino]
        self.inode_count -= 1
        self.unflushed.discard(inode.ino)
        inode.leases.clear()
        inode.unwritten.clear()

    def refresh_totals(self) -> None:
        with self.database.read() as connection:
            totals = namespace.totals(connection)
        self.used_bytes = totals["logical_bytes"]
        self.inode_count = totals["inodes"]
