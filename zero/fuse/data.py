"""The data path: read, write, truncate and fsync over the chunk files.

Reads take no lock and, when the chunk is cached, touch no database: one
pread on the shared descriptor per chunk. A chunk without a cache file is
asked about in the state (a hole, or fault it in). Writes go through the
chunk's write lease (zero.fuse.leases); each inode's ``lock`` serialises its
data changes.
"""

from __future__ import annotations

import logging
import os
import time

from zero.config import Config
from zero.errors import WorkerUnavailable, ZeroError
from zero.fuse.chunkfiles import ChunkFiles
from zero.fuse.flusher import Flusher
from zero.fuse.inodes import Handle, Inode
from zero.fuse.leases import Leases
from zero.fuse.tree import Tree, now_ns
from zero.fuse.worker_link import WorkerLink
from zero.state import backlog, chunks, requests
from zero.state.chunks import Readiness
from zero.state.db import worker_settings

log = logging.getLogger(__name__)

ATTR_TIMEOUT_S = 1.0  # how long the kernel keeps attributes and entries
ALLOCATED_TTL_S = ATTR_TIMEOUT_S
SEQUENTIAL_SLACK_BYTES = 2 * 1024 * 1024  # a request and the read-ahead window (max_readahead, 1 MiB) each
SETTINGS_REFRESH_S = 1.0  # how long the worker's published prefetch settings are trusted
READ_ATTEMPTS = 5  # looks at a chunk that keeps moving before the time limit can end the read


class DataPath:
    def __init__(self, tree: Tree, leases: Leases, flusher: Flusher, files: ChunkFiles, config: Config,
                 worker: WorkerLink, chunk_size: int):
        self.tree = tree
        self.database = tree.database
        self.leases = leases
        self.flusher = flusher
        self.files = files
        self.config = config
        self.worker = worker
        self.chunk_size = chunk_size
        self._window = 0
        self._window_read_at = float("-inf")

    # --- read -------------------------------------------------------------------------------

    def read(self, inode: Inode, size: int, offset: int) -> bytes:
        end = min(offset + size, inode.size)
        if offset >= end:
            return b""
        # Judged on arrival, before this read waits for a fault-in: the kernel sends
        # its read-ahead together, and FUSE's threads may take them out of order,
        # so a read near where the last one ended counts as sequential too.
        sequential = abs(offset - inode.last_read_end) <= SEQUENTIAL_SLACK_BYTES
        inode.last_read_end = max(end, inode.last_read_end) if sequential else end
        if sequential and (end - 1) // self.chunk_size != (offset - 1) // self.chunk_size:
            self._prefetch_after(inode, (end - 1) // self.chunk_size)
        pieces = []
        position = offset
        now = time.time()
        while position < end:
            idx, within = divmod(position, self.chunk_size)
            length = min(self.chunk_size - within, end - position)
            pieces.append(self._read_chunk(inode.ino, idx, within, length))
            self.flusher.record_access(inode.ino, idx, now)
            position += length
        return b"".join(pieces)

    def _read_chunk(self, ino: int, idx: int, within: int, length: int) -> bytes:
        path = self.files.cache.chunk_path(ino, idx)
        give_up_at = None
        attempts = 0
        while True:
            chunk_file = self.files.acquire(ino, idx)
            if chunk_file is not None:
                try:
                    data = os.pread(chunk_file.fd, length, within)
                finally:
                    self.files.release(chunk_file)
                if len(data) < length:
                    data += bytes(length - len(data))  # past the chunk file's end: a hole
                return data
            # A chunk evicted again between its fault-in and this look is looked at
            # again, for as long as a fault-in may take: a read that gives up is an
            # EIO the program does not retry.
            attempts += 1
            if give_up_at is None:
                give_up_at = time.monotonic() + self.worker.timeout_s
            elif attempts > READ_ATTEMPTS and time.monotonic() > give_up_at:
                raise ZeroError(f"chunk {idx} of inode {ino} kept moving in and out of the cache while it was "
                                f"read ({attempts} looks in {self.worker.timeout_s:.0f} s: the cache is too small "
                                f"for what is being read at once; raise targetDiskUsage)")
            with self.database.read() as connection:
                readiness = chunks.readiness(connection, ino, idx, lambda: os.path.exists(path))
            if readiness == Readiness.HOLE:
                return bytes(length)
            if readiness == Readiness.FETCH:
                self.worker.wait_local(ino, idx)
            elif readiness == Readiness.EVICTION_UNFINISHED:
                self.worker.wait_eviction_settled(ino, idx)
            # HERE: the file appeared since we looked (fetched, or created by a writer): look again

    def _prefetch_after(self, inode: Inode, last_idx: int) -> None:
        """A sequential reader crossed into a new chunk: ask the worker for the
        next ones that are not cached (a look at the cache folder first: the
        state is asked only when one of them has no file)."""
        count = self._prefetch_window()
        if count <= 0:
            return
        wanted = range(last_idx + 1, min(last_idx + 1 + count, (inode.size - 1) // self.chunk_size + 1))
        missing = [idx for idx in wanted if not os.path.exists(self.files.cache.chunk_path(inode.ino, idx))]
        if not missing:
            return
        with self.database.read() as connection:
            remote = chunks.remote_indexes(connection, inode.ino, missing)
        self.worker.request_fetches(inode.ino, remote, requests.PREFETCH)

    def _prefetch_window(self) -> int:
        """prefetchChunks, but at most half the cache: a window the evictor must eat
        into evicts chunks fetched ahead before they are read, and fetches them
        again (prefetchChunks 16 over a 64 MiB cache of 4 MiB chunks: 234-268
        MiB/s, against 389-488 capped at 8). Both settings as the running worker
        published them, so `zero reload` changes them here too (decision 83);
        this process's own config when no worker runs."""
        now = time.monotonic()
        if now - self._window_read_at > SETTINGS_REFRESH_S:
            published = {}
            if self.worker.worker_pid() is not None:
                with self.database.read() as connection:
                    published = worker_settings(connection)
            prefetch = published.get("prefetchChunks", self.config.prefetch_chunks)
            target = published.get("targetDiskUsage", self.config.target_disk_usage_bytes)
            self._window = min(prefetch, target // self.chunk_size // 2)
            self._window_read_at = now
        return self._window

    # --- write ------------------------------------------------------------------------------

    def write(self, inode: Inode, handle: Handle | None, data, offset: int) -> int:
        self.flusher.admit_write(len(data))
        with inode.lock:
            if handle is not None and handle.append:
                offset = inode.size
            sequential = offset == inode.last_write_end
            view = memoryview(data)
            position = offset
            while view:
                idx, within = divmod(position, self.chunk_size)
                piece = view[:self.chunk_size - within]
                chunk_file = self.leases.writable_chunk(inode, idx)
                try:
                    written = os.pwrite(chunk_file.fd, piece, within)
                finally:
                    self.files.release(chunk_file)
                self.leases.touched(inode, idx)
                view = view[written:]
                position += written
            if position > inode.size:
                inode.size = position
            inode.mtime_ns = inode.ctime_ns = now_ns()
            inode.allocated_bytes = None
            self.tree.mark_unflushed(inode)
            inode.last_write_end = position
            if sequential:
                # Chunks this sequential writer filled and left: upload them while it
                # writes on, so fsync or close waits only for the tail (decision 66).
                filled = [idx for idx in range(offset // self.chunk_size, position // self.chunk_size)
                          if idx in inode.leases]
                if filled:
                    try:
                        self.leases.hand_over_filled(inode, filled)
                    except Exception as error:  # noqa: BLE001 - the bytes landed; the close hands them over
                        log.warning("Could not hand chunks %s of inode %d to zero-worker early (%s); they go "
                                    "at close or after uploadDelay instead", filled, inode.ino, error)
        return len(data)

    def truncate(self, inode: Inode, length: int) -> None:
        """The caller holds ``inode.lock``."""
        now = now_ns()
        inode.allocated_bytes = None
        if length >= inode.size:
            with self.tree.changing(inode) as connection:
                inode.size, inode.mtime_ns, inode.ctime_ns = length, now, now
                self.tree.persist(connection, inode)
            return
        keep = -(-length // self.chunk_size)
        partial_idx, partial_len = divmod(length, self.chunk_size)
        if partial_len:
            with self.database.read() as connection:
                exists = chunks.get(connection, inode.ino, partial_idx) is not None
            if exists:
                chunk_file = self.leases.writable_chunk(inode, partial_idx)
                try:
                    os.ftruncate(chunk_file.fd, partial_len)
                finally:
                    self.files.release(chunk_file)
                self.leases.touched(inode, partial_idx)
        with self.tree.changing(inode) as connection:
            dropped = chunks.drop_from(connection, inode.ino, keep)
            inode.size, inode.mtime_ns, inode.ctime_ns = length, now, now
            self.tree.persist(connection, inode)
        for idx in dropped:
            inode.leases.pop(idx, None)
            inode.written(idx)  # its row went: nothing to look for, and the inode may go idle
        self.files.delete(inode.ino, dropped)

    # --- fsync ------------------------------------------------------------------------------

    def fsync(self, inode: Inode) -> None:
        """Make the file's data durable in the cache and, with fsyncWaitsForUpload
        and a running worker, in the remotes before returning."""
        with inode.lock:
            # Every chunk not yet uploaded, not only the leased ones: a chunk handed
            # over early (filled, or quiet) may still be only in the page cache.
            with self.database.read() as connection:
                unuploaded = {idx for _, idx in backlog.unuploaded_versions(connection, inode.ino)}
            for idx in sorted(unuploaded | set(inode.leases)):
                chunk_file = self.files.acquire(inode.ino, idx)
                if chunk_file is not None:
                    try:
                        os.fsync(chunk_file.fd)
                    finally:
                        self.files.release(chunk_file)
            self.leases.release(inode, persist=True)
            with self.database.read() as connection:
                versions = backlog.unuploaded_versions(connection, inode.ino)
        self._make_durable(f"fsync of inode {inode.ino}", versions, inode.ino)

    def fsync_names(self, folder: Inode) -> None:
        """fsync of a folder: the names in it made durable, as after a file's fsync (the
        write-then-rename pattern fsyncs the folder last, and a restore must find the rename)."""
        self._make_durable(f"fsync of folder inode {folder.ino}", {}, None)

    def _make_durable(self, what: str, versions: dict, ino: int | None) -> None:
        """The state's commits durable here; with fsyncWaitsForUpload and a running worker,
        the data's ``versions`` uploaded and then a metadata segment covering every change
        so far in the remotes (a restore on a new machine finds them)."""
        self.database.durable_checkpoint()
        if not self.config.fsync_waits_for_upload:
            return
        if self.worker.worker_pid() is None:
            if versions or self.worker.metadata_pending():
                # fsyncWaitsForUpload promises the remotes; success here would be a lie.
                refused = self.worker.last_refusal()
                if refused:
                    raise WorkerUnavailable(f"{what}: the change is safe in the local cache, but zero-worker is not "
                                            f"running, and the last one to run uploaded nothing from this cache, "
                                            f"because {refused}")
                raise WorkerUnavailable(
                    f"{what}: the change is safe in the local cache, but zero-worker is not running, so it is "
                    f"not in the remotes as fsyncWaitsForUpload promises; start it with: zero-worker "
                    f"{self.files.cache.root} (or set fsyncWaitsForUpload: false to let fsync return once the "
                    f"change is safe locally)")
            return
        refusal = self.worker.refusal()
        if refusal and (versions or self.worker.metadata_pending()):
            # Waiting would only run out faultInTimeout (decision 108).
            raise WorkerUnavailable(f"{what}: the change is safe in the local cache, but zero-worker uploads "
                                    f"nothing from this cache, because {refusal}")
        if versions:
            self.worker.wait_uploaded(ino, versions)
        self.worker.wait_backed_up()

    # --- what the file costs locally ----------------------------------------------------------

    def allocated_bytes(self, inode: Inode) -> int:
        """Disk bytes the file's chunk files really hold: holes and evicted chunks
        cost nothing locally, so `du` and `rsync --sparse` see what is there.
        Remembered for as long as the kernel keeps attributes, or until the next
        write or truncate (an eviction or fault-in changes it behind our back)."""
        now = time.monotonic()
        if inode.allocated_bytes is None or now - inode.allocated_at > ALLOCATED_TTL_S:
            if inode.size <= self.chunk_size:
                indexes = [0] if inode.size else []  # no database read for a small file
            else:
                with self.database.read() as connection:
                    indexes = chunks.local_indexes(connection, inode.ino)
            inode.allocated_bytes = self.files.cache.bytes_of((inode.ino, idx) for idx in indexes)
            inode.allocated_at = now
        return inode.allocated_bytes
