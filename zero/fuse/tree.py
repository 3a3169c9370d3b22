"""zero-fuse's in-memory namespace: inodes and directory entries, loaded
from the state on first use and written through on every change.

zero-fuse is the namespace's only writer, so memory is the truth; ``lock``
serialises namespace changes, so checking and applying under it is
race-free. Sizes and times that change on every write are marked
"unflushed" here and written in batches by the flusher.

Memory holds at most about MEMORY_INODES idle inodes: beyond that the least
recently used ones that nothing depends on are let go (their rows hold all
they know) and loaded again when asked for. "Nothing depends on" must
include an operation that took the inode a moment ago and is about to
change it: were it let go and loaded again, two objects would stand for one
inode and a change to the older would be lost. So every FUSE operation
registers when it starts (``operation_started``), taking an inode stamps it
(``use``), and only inodes stamped before the oldest running operation
started are let go.

Folders' listings are bounded the same way, by the names they hold
(LISTED_NAMES_PER_INODE for each inode allowed): a walk of a million files
loaded every folder's listing, about 100 bytes a name, and kept them as long
as the folders themselves stayed in memory, which they do while anything
under them is used. Beyond the bound, the listings of folders no running
operation took are let go, least recently used first; a lookup in such a
folder then asks the state for the one name, and a change to it loads the
listing again. A listing only ever mirrors committed rows, so letting it go
loses nothing. A listing of more than half the bound stays with its folder,
as all did before: it is the folder's own size, and loading it again for
each change would cost a query of every name.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import threading
import time

from zero.fuse.binding import FuseOSError, KernelCache
from zero.fuse.chunkfiles import ChunkFiles
from zero.fuse.inodes import NO_CHUNKS, Inode
from zero.fuse.translate import name_bytes, split
from zero.state import namespace
from zero.state.db import Database

HIDDEN_PREFIX = ".fuse_hidden"
# Idle inodes kept in memory (about 0.5 KiB each with their directory entries):
# a million-file namespace must not cost zero-fuse a gigabyte (issue 11).
MEMORY_INODES = 50_000
LISTED_NAMES_PER_INODE = 2  # names in folders' listings kept for each inode allowed in memory
LISTING_CHECK_EVERY = 1_000  # at most, inodes loaded between two counts of the names listed (creates grow listings)


def now_ns() -> int:
    return time.time_ns()


class Tree:
    def __init__(self, database: Database, files: ChunkFiles, kernel_cache: KernelCache,
                 memory_inodes: int = MEMORY_INODES):
        self.database = database
        self.files = files
        self.kernel_cache = kernel_cache
        self.lock = threading.RLock()
        self.inodes: dict[int, Inode] = {}
        self.children: dict[int, dict[bytes, int]] = {}  # directory -> its whole listing, once loaded
        # directory -> names looked up in it while its listing is not loaded (changes load the listing)
        self.looked_up: dict[int, dict[bytes, int]] = {}
        self.hidden: dict[int, dict[bytes, int]] = {}  # parent -> libfuse's names for unlinked open files
        self.unflushed: set[int] = set()
        self._marks = threading.Lock()  # marking changed and marking flushed, never interleaved
        self.used_bytes = 0
        self.inode_count = 0
        self.memory_inodes = memory_inodes
        self._ticks = itertools.count(1)
        self._running: dict[int, None] = {}  # start ticks of the operations running now
        self._running_lock = threading.Lock()
        self._sweep_above = memory_inodes
        self.listed_names = memory_inodes * LISTED_NAMES_PER_INODE
        self._listed_estimate = 0  # names in children and looked_up, as of the last count plus loads since
        self._adds_since_count = 0
        self._count_every = max(min(LISTING_CHECK_EVERY, self.listed_names // 4), 1)
        self._sweep_listings_above = self.listed_names

    # --- loading -----------------------------------------------------------------------

    def inode(self, ino: int) -> Inode:
        with self.lock:  # never between a sweep's look at an inode and its letting go
            inode = self.inodes.get(ino)
            if inode is None:
                row = namespace.read_inode(self.database, ino)
                if row is None:
                    raise FuseOSError(errno.ENOENT)
                return self.add(Inode(row))
            return self.use(inode)

    def add(self, inode: Inode) -> Inode:
        """An inode new to memory (created, or read from its row); the caller holds
        ``lock``. Stamped before the sweep its arrival may set off, which would
        otherwise let it go at once."""
        self.inodes[inode.ino] = self.use(inode)
        self.sweep_if_full()
        self._adds_since_count += 1
        if self._adds_since_count >= self._count_every:
            self.sweep_listings()
        return inode

    # --- letting idle inodes go --------------------------------------------------------

    def operation_started(self) -> int:
        """At the start of each FUSE operation: what it takes stays in memory until
        ``operation_ended`` with the number this returns."""
        start = next(self._ticks)
        with self._running_lock:
            self._running[start] = None
        return start

    def operation_ended(self, start: int) -> None:
        with self._running_lock:
            del self._running[start]

    def use(self, inode: Inode) -> Inode:
        """Stamp an inode a running operation took (``inode()`` and ``child()`` do;
        callers holding it through a handle call this)."""
        inode.used = next(self._ticks)
        return inode

    def sweep_if_full(self) -> int:
        """With more than ``memory_inodes`` in memory, let the idle quarter go; the
        caller holds ``lock``. Returns how many went."""
        if len(self.inodes) <= self._sweep_above:
            return 0
        with self._running_lock:
            oldest = min(self._running, default=next(self._ticks))
        # Files unlinked while open, under libfuse's hidden names: unlinking that name purges them.
        hidden = {ino for names in self.hidden.values() for ino in names.values()}
        idle = [inode for inode in self.inodes.values()
                if inode.used < oldest and inode.ino not in hidden and self._idle(inode)]
        keep = self.memory_inodes * 3 // 4
        going = heapq.nsmallest(max(len(self.inodes) - keep, 0), idle, key=lambda inode: inode.used)
        for inode in going:
            del self.inodes[inode.ino]
            self._listed_estimate -= len(self.children.pop(inode.ino, ())) + len(self.looked_up.pop(inode.ino, ()))
        self._listed_estimate = max(self._listed_estimate, 0)  # creates grow listings uncounted
        # Inodes in use stay; if most are, do not sweep again on every load.
        self._sweep_above = max(self.memory_inodes, len(self.inodes) + self.memory_inodes // 4)
        return len(going)

    def sweep_listings(self, spare: int | None = None) -> int:
        """With more names listed than ``listed_names``, let go of the listings of
        folders no running operation took (nor ``spare``), least recently used
        first, down to three quarters of it; the caller holds ``lock``. Returns how
        many went."""
        self._adds_since_count = 0
        listed = sum(map(len, self.children.values())) + sum(map(len, self.looked_up.values()))
        self._listed_estimate = listed
        if listed <= self.listed_names:
            self._sweep_listings_above = self.listed_names
            return 0
        with self._running_lock:
            oldest = min(self._running, default=next(self._ticks))
        # A folder used in the last stretch of operations keeps its listing: reloading
        # a big folder's listing after every use elsewhere would cost more than it held.
        before = min(oldest, next(self._ticks) - self.memory_inodes // 4)
        folders = []
        for ino in self.children.keys() | self.looked_up.keys():
            folder = self.inodes.get(ino)
            used = 0 if folder is None else folder.used
            # A big listing stays with its folder, as before: loading it again for the
            # next change to the folder is a query of every name in it.
            if used < before and ino != spare and len(self.children.get(ino, ())) <= self.listed_names // 2:
                folders.append((used, ino))
        folders.sort()
        keep = self.listed_names * 3 // 4
        went = 0
        for _, ino in folders:
            if listed <= keep:
                break
            listed -= len(self.children.pop(ino, ())) + len(self.looked_up.pop(ino, ()))
            went += 1
        self._listed_estimate = listed
        # If most names are in folders in use, do not count again on every load.
        self._sweep_listings_above = max(self.listed_names, listed + self.listed_names // 4)
        return went

    def _idle(self, inode: Inode) -> bool:
        return (inode.ino != namespace.ROOT_INO and not inode.open_handles and not inode.leases
                and not inode.unwritten and not inode.attrs_unflushed and inode.ino not in self.unflushed
                and inode.ino not in self.hidden)  # a directory holding hidden names

    def entries(self, parent: int) -> dict[bytes, int]:
        """A directory's whole listing, loaded on first use; every change to a
        directory goes through it (so names looked up one by one never go stale)."""
        entries = self.children.get(parent)
        if entries is None:
            with self.database.read() as connection:
                entries = {name: ino for name, ino, _ in namespace.list_entries(connection, parent)}
            self.children[parent] = entries
            self._listed_estimate += len(entries) - len(self.looked_up.pop(parent, ()))
            if self._listed_estimate > self._sweep_listings_above:
                self.sweep_listings(spare=parent)  # a walk (find, ls -R) loads listings, not inodes
        return entries

    def lookup(self, parent: int, name: bytes) -> int | None:
        with self.lock:
            found = self.child(parent, name)
            return None if found is None else found.ino

    def child(self, parent: int, name: bytes) -> Inode | None:
        """The inode ``name`` in directory ``parent`` names, from its listing if
        loaded, else by name: a lookup in a folder of a million names must not load
        them all. The caller holds ``lock``."""
        entries = self.children.get(parent)
        if entries is None:
            entries = self.looked_up.get(parent)
        ino = None if entries is None else entries.get(name)
        if ino is not None:
            return self.inode(ino)
        if parent in self.children:
            return None
        row = namespace.lookup_inode(self.database, parent, name)
        if row is None:
            return None
        known = self.looked_up.setdefault(parent, {})
        if len(known) >= self.memory_inodes:
            self._listed_estimate -= len(known)
            known.clear()  # a huge folder read at random: bounded like the inodes
        known[name] = row.ino
        self._listed_estimate += 1
        if self._listed_estimate > self._sweep_listings_above:
            self.sweep_listings(spare=parent)
        inode = self.inodes.get(row.ino)
        return self.add(Inode(row)) if inode is None else self.use(inode)

    def resolve(self, path: str) -> Inode:
        with self.lock:
            inode = self.inode(namespace.ROOT_INO)
            for component in path.split("/"):
                if not component:
                    continue
                if not inode.is_dir:
                    raise FuseOSError(errno.ENOTDIR)
                name = name_bytes(component)
                found = self.child(inode.ino, name)
                if found is None:
                    hidden = self.hidden.get(inode.ino, {}).get(name)
                    if hidden is None:
                        raise FuseOSError(errno.ENOENT)
                    found = self.inode(hidden)
                inode = found
            return inode

    def parent_and_name(self, path: str) -> tuple[Inode, bytes]:
        parent_path, name = split(path)
        parent = self.resolve(parent_path)
        if not parent.is_dir:
            raise FuseOSError(errno.ENOTDIR)
        return parent, name_bytes(name)

    def kernel_inodes(self, inode: Inode) -> int:
        """How many kernel inodes show this file: libfuse's path API gives one to
        each of its names and to each hidden name of it unlinked while open.
        More than one, and a change through one leaves the others' pages stale."""
        if inode.is_dir:
            return 1
        if not self.hidden:  # the usual case, and open asks on every call: no lock, no scan
            return inode.nlink
        with self.lock:
            hidden = sum(1 for names in self.hidden.values() for ino in names.values() if ino == inode.ino)
        return inode.nlink + hidden

    def is_hidden_name(self, path: str) -> bool:
        """Is ``path`` libfuse's hidden name for an unlinked open file?"""
        parent_path, name = split(path)
        if not name.startswith(HIDDEN_PREFIX):
            return False
        with self.lock:
            parent = self.resolve(parent_path)
            raw = name_bytes(name)
            return raw in self.hidden.get(parent.ino, {}) and self.lookup(parent.ino, raw) is None

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
        # An operation of its own until the commit (the flusher runs outside FUSE's): persist()
        # marks an inode flushed before the commit, and one let go and read back in between
        # would come back with the rows as they were.
        operation = self.operation_started()
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
        finally:
            self.operation_ended(operation)

    def persist(self, connection, inode: Inode) -> None:
        """Write ``inode``'s attributes; it counts as flushed only if nothing changed
        them meanwhile. The flusher writes without the locks of those who change
        them (a write, a chmod): a change that lands during the write must stay
        marked, or after an unmount the state keeps the older mode or size."""
        self.use(inode)  # kept in memory until the commit (see changing)
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
        inode.unwritten = NO_CHUNKS

    def refresh_totals(self) -> None:
        with self.database.read() as connection:
            totals = namespace.totals(connection)
        self.used_bytes = totals["logical_bytes"]
        self.inode_count = totals["inodes"]
