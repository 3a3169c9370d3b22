"""Write leases: before fuse writes to a chunk it takes the chunk's lease in
the state (dirty, leased, version + 1), so the worker neither uploads nor
evicts it while writes may land; fuse hands chunks back on the last close,
on fsync, and after uploadDelay of quiet (docs/architecture.md).

The pitfall this module guards: a shared chunk descriptor may name a file
the worker has since evicted. Reading through it is still correct; writing
through it would lose the write. So taking a lease re-checks the link count
and replaces the descriptor every reader then uses.
"""

from __future__ import annotations

import os
import time

from zero.cachedir import CacheDir
from zero.fuse.chunkfiles import ChunkFile, ChunkFiles
from zero.fuse.inodes import Inode
from zero.fuse.tree import Tree
from zero.fuse.worker_link import WorkerLink
from zero.state import chunks, requests
from zero.state.chunks import Readiness


class Leases:
    def __init__(self, tree: Tree, cache: CacheDir, files: ChunkFiles, worker: WorkerLink):
        self.tree = tree
        self.database = tree.database
        self.cache = cache
        self.files = files
        self.worker = worker

    def writable_chunk(self, inode: Inode, idx: int) -> ChunkFile:
        """The chunk's descriptor, safe to write through: the lease is held, so
        the worker will not evict it, and the descriptor names the linked file.
        The caller holds ``inode.lock`` and releases the descriptor after writing."""
        if idx not in inode.leases:
            self._take(inode, idx)
            chunk_file = self.files.acquire(inode.ino, idx)
            if chunk_file is None or os.fstat(chunk_file.fd).st_nlink == 0:
                if chunk_file is not None:
                    self.files.release(chunk_file)
                chunk_file = self.files.reopen(inode.ino, idx)
        else:
            # An unwritten chunk has no file yet: do not look for one.
            chunk_file = None if idx in inode.unwritten else self.files.acquire(inode.ino, idx)
            if chunk_file is None:
                chunk_file = self.files.reopen(inode.ino, idx)
        inode.written(idx)  # its file exists now: release keeps the row
        return chunk_file

    def touched(self, inode: Inode, idx: int) -> None:
        """A write under the lease: the quiet period restarts."""
        inode.leases[idx] = time.monotonic()

    def _take(self, inode: Inode, idx: int) -> None:
        path = self.cache.chunk_path(inode.ino, idx)
        while True:
            with self.database.write() as connection:
                # Inside the write transaction a live eviction cannot be half-way.
                readiness = chunks.take_lease(connection, inode.ino, idx, file_exists=lambda: _on_disk(path))
            if readiness == Readiness.HERE:
                self.touched(inode, idx)
                return
            if readiness == Readiness.EVICTION_UNFINISHED:
                self.worker.wait_eviction_settled(inode.ino, idx)
            else:
                self.worker.wait_local(inode.ino, idx)

    def release(self, inode: Inode, indexes=None, persist: bool = False) -> None:
        """Hand chunks to the worker; with ``persist``, write the batched size and
        times in the same transaction (fsync: one commit, not two)."""
        indexes = list(inode.leases if indexes is None else indexes)
        persist = persist and inode.attrs_unflushed and inode.ino in self.tree.inodes
        if not indexes and not persist:
            return
        with self.tree.changing(inode) as connection:
            self.release_in(connection, inode, indexes, persist)
        self.released(inode, indexes)

    def release_in(self, connection, inode: Inode, indexes: list[int], persist: bool = False) -> None:
        """The rows' part of a release, in the caller's transaction (the caller
        holds ``inode.lock`` and calls released() after the commit)."""
        if persist:
            self.tree.persist(connection, inode)
        chunks.drop_unwritten(connection, inode.ino, [idx for idx in indexes if idx in inode.unwritten])
        # The last write, not this commit, dates a chunk: a file's tail released at its
        # close batch must not look newer than the next file's chunks handed over meanwhile.
        wall_minus_monotonic = time.time() - time.monotonic()
        written_at = {idx: wall_minus_monotonic + inode.leases[idx] for idx in indexes if idx in inode.leases}
        chunks.release_leases(connection, inode.ino, [idx for idx in indexes if idx not in inode.unwritten], written_at)

    def hand_over_filled(self, inode: Inode, indexes: list[int]) -> None:
        """A sequential writer filled these chunks and moved on: release them and
        ask for their upload now rather than after uploadDelay, as a close would
        have. A later write takes the lease back (the upload then counts for
        nothing and the chunk goes again). The caller holds ``inode.lock``.

        The size is written in the same commit, as every release does: once
        uploaded and evicted a chunk has no file, and after a crash the
        reconciler can restore a size only from files still dirty."""
        persist = inode.attrs_unflushed and inode.ino in self.tree.inodes
        with self.tree.changing(inode) as connection:
            self.release_in(connection, inode, indexes, persist)
            requests.request_upload(connection, inode.ino)
        self.released(inode, indexes)
        self.worker.wake_worker()

    @staticmethod
    def released(inode: Inode, indexes: list[int]) -> None:
        for idx in indexes:
            inode.leases.pop(idx, None)
            inode.written(idx)

    def release_quiet(self, quiet_s: float) -> bool:
        """Chunks nobody wrote for ``quiet_s`` go to the worker even while their
        file stays open (logs, databases, VM images). True if any went."""
        quiet_before = time.monotonic() - quiet_s
        released = False
        with self.tree.lock:
            inodes = [inode for inode in self.tree.inodes.values() if inode.leases]
        for inode in inodes:
            with inode.lock:
                quiet = [idx for idx, at in inode.leases.items() if at <= quiet_before]
                if quiet:
                    self.release(inode, quiet, persist=True)
                    released = True
        return released


def _on_disk(path: str) -> bool:
    """A clean chunk is about to turn dirty: sync its file first; False if it has
    none. Fault-ins and uploads leave chunk files to the kernel's writeback
    (decisions 73, 76), and a restart distrusts only recent *clean* files: once
    the row says dirty, a power cut would upload whatever the disk held for
    the bytes this write does not cover."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)
    return True
