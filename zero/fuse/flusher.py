"""The flusher: once a second, write what zero-fuse batches (sizes, times,
access times), close descriptors of evicted chunks, hand quiet chunks to the
worker, and decide whether writers must slow down or stop.

- Backpressure: when unuploaded data alone exceeds targetDiskUsage, each
  write waits briefly for the worker's progress and quiet chunks go to the
  worker sooner.
- Disk space: writes fail with ENOSPC while the cache disk has less than
  minFreeDisk free.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time

from zero.cachedir import CacheDir
from zero.config import Config
from zero.fuse.binding import FuseOSError
from zero.fuse.chunkfiles import ChunkFiles
from zero.fuse.leases import Leases
from zero.fuse.tree import Tree
from zero.fuse.worker_link import WorkerLink
from zero.state import chunks

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 1.0
TOTALS_EVERY_TICKS = 10       # statfs's totals are re-read from the state this often
DISK_CHECK_INTERVAL_S = 0.5
THROTTLE_WAIT_S = 0.05        # how long one write waits for the worker while dirty data is over target
THROTTLE_QUIET_S = 0.25       # while throttled, chunks quiet this long go to the worker at once
JOIN_TIMEOUT_S = 10.0


class Flusher:
    def __init__(self, tree: Tree, leases: Leases, files: ChunkFiles, cache: CacheDir, config: Config,
                 worker: WorkerLink):
        self.tree = tree
        self.database = tree.database
        self.leases = leases
        self.files = files
        self.cache = cache
        self.config = config
        self.worker = worker
        self.accesses: dict[tuple[int, int], float] = {}
        self.dirty_bytes = 0
        self.dirty_over_target = False
        self._space_lock = threading.Lock()
        self._free_estimate = 0
        self._measured_at = 0.0
        self._disk_full = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        self.tree.refresh_totals()
        self._thread = threading.Thread(target=self._loop, name="zero-flusher", daemon=True)
        self._thread.start()

    def stop(self) -> bool:
        """Stop the thread; False if it was stopped already."""
        if self._stop.is_set():
            return False
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=JOIN_TIMEOUT_S)
        return True

    def _loop(self) -> None:
        ticks = 0
        while not self._stop.wait(FLUSH_INTERVAL_S):
            try:
                self.flush()
                self.files.drop_unlinked()  # let evicted chunks' disk space go
                self._measure_dirty()
                quiet_s = THROTTLE_QUIET_S if self.dirty_over_target else self.config.upload_delay_s
                if self.leases.release_quiet(quiet_s):
                    self.worker.wake_worker()
                ticks += 1
                if ticks % TOTALS_EVERY_TICKS == 0:
                    self.tree.refresh_totals()
            except Exception:  # keep batching alive; the next tick retries
                log.exception("Background flush failed; retrying in %.0fs", FLUSH_INTERVAL_S)

    # --- batching -------------------------------------------------------------------------

    def record_access(self, ino: int, idx: int, at: float) -> None:
        self.accesses[(ino, idx)] = at

    def flush(self) -> None:
        """Write batched sizes, times and access times in one transaction."""
        accesses, self.accesses = self.accesses, {}
        with self.tree.lock:
            pending = [self.tree.inodes[ino] for ino in list(self.tree.unflushed) if ino in self.tree.inodes]
        if not accesses and not pending:
            return
        with self.tree.changing(*pending) as connection:
            chunks.record_access(connection, accesses)
            for inode in pending:
                self.tree.persist(connection, inode)

    # --- before a write -------------------------------------------------------------------

    def admit_write(self, size: int) -> None:
        """Raise ENOSPC when ``size`` more bytes would leave the cache disk with
        less than minFreeDisk; slow the writer down while unuploaded data alone
        is over the target (the worker's next upload wakes it; the timeout keeps
        writers moving)."""
        full = not self._reserve(size, self.config.min_free_disk_bytes)
        if full != self._disk_full:
            self._disk_full = full
            if full:
                log.warning("The cache disk has less than %d MiB free; writes fail with 'No space left on "
                            "device' until zero-worker uploads and evicts, or space is freed",
                            self.config.min_free_disk_bytes // 2**20)
            else:
                log.info("The cache disk has room again; writes are accepted")
        if full:
            raise FuseOSError(errno.ENOSPC)
        if self.dirty_over_target:
            self.worker.wait_for_progress(THROTTLE_WAIT_S)

    def admit_new_name(self) -> None:
        """New names need room in the state: refused with ENOSPC only below half
        of minFreeDisk, so the database keeps headroom for its own commits
        (deleting, closing, fsync) after data writes were refused."""
        if not self._reserve(0, self.config.min_free_disk_bytes // 2):
            raise FuseOSError(errno.ENOSPC)

    def _reserve(self, size: int, floor: int) -> bool:
        """Whether ``size`` bytes fit above ``floor``; if so they are counted.

        Free space is measured every DISK_CHECK_INTERVAL_S and, in between,
        counted down by what writers were admitted, so a fast writer cannot run
        past the floor between two measurements: near the floor every write
        measures again."""
        with self._space_lock:
            now = time.monotonic()
            if self._free_estimate - size < floor or now - self._measured_at > DISK_CHECK_INTERVAL_S:
                vfs = os.statvfs(self.cache.root)
                self._free_estimate = vfs.f_bavail * vfs.f_frsize
                self._measured_at = now
            if self._free_estimate - size < floor:
                return False
            self._free_estimate -= size
            return True

    def _measure_dirty(self) -> None:
        with self.database.read() as connection:
            unuploaded = chunks.unuploaded(connection)
        self.dirty_bytes = self.cache.bytes_of(unuploaded)
        over = self.dirty_bytes > self.config.target_disk_usage_bytes
        if over != self.dirty_over_target:
            if over:
                log.info("Unuploaded data (%d MiB) exceeds targetDiskUsage (%d MiB): slowing writers until "
                         "zero-worker catches up", self.dirty_bytes >> 20, self.config.target_disk_usage_bytes >> 20)
            else:
                log.info("Unuploaded data is back under targetDiskUsage: writing at full speed")
        self.dirty_over_target = over
