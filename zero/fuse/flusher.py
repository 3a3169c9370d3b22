"""The flusher: once a second, write what zero-fuse batches (sizes, times,
access times), close descriptors of evicted chunks, hand quiet chunks to the
worker, and decide whether writers must slow down or stop.

- Closes: the last close of a written file hands its chunks to the worker
  and writes its size and times. Closes that arrive within CLOSE_BATCH_S of
  each other share one commit (tar x, cp -r: one commit for a burst, not
  one per file). Nothing is at risk meanwhile: the chunk rows are committed
  (dirty, leased) before the first write lands, and after a crash the
  mount-time reconciler releases every lease and restores sizes from the
  chunk files (docs/decisions.md).

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
from zero.fuse.inodes import Inode
from zero.fuse.leases import Leases
from zero.fuse.tree import Tree
from zero.fuse.worker_link import WorkerLink
from zero.state import backlog, chunks

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 1.0
TOTALS_EVERY_TICKS = 10       # statfs's totals are re-read from the state this often
DISK_CHECK_INTERVAL_S = 0.5
THROTTLE_WAIT_S = 0.05        # how long one write waits for the worker while dirty data is over target
THROTTLE_QUIET_S = 0.25       # while throttled, chunks quiet this long go to the worker at once
JOIN_TIMEOUT_S = 10.0
DIRTY_SAMPLE = 512            # unuploaded chunks measured each second at most
# Closes and attribute changes within this window share one commit. The crash
# test stretches it (ZERO_TEST_CLOSE_BATCH_S) to kill zero-fuse with a batch pending.
CLOSE_BATCH_S = float(os.environ.get("ZERO_TEST_CLOSE_BATCH_S", "0.05"))


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
        self._closed: dict[int, Inode] = {}
        self._closed_lock = threading.Lock()
        self._closing = threading.Event()

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
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout=JOIN_TIMEOUT_S)
        return True

    def _loop(self) -> None:
        ticks = 0
        next_tick = time.monotonic() + FLUSH_INTERVAL_S
        while True:
            if self._closing.wait(max(next_tick - time.monotonic(), 0)):
                self._stop.wait(CLOSE_BATCH_S)  # let the closes of a burst gather
            if self._stop.is_set():
                return
            try:
                if time.monotonic() < next_tick:
                    self.flush()  # woken early: closes or attribute changes to commit
                    continue
                next_tick = time.monotonic() + FLUSH_INTERVAL_S
                self.flush()
                self.files.drop_unlinked()  # let evicted chunks' disk space go
                self._measure_dirty()
                quiet_s = THROTTLE_QUIET_S if self.dirty_over_target else self.config.upload_delay_s
                if self.leases.release_quiet(quiet_s):
                    self.worker.wake_worker(soon=True)
                ticks += 1
                if ticks % TOTALS_EVERY_TICKS == 0:
                    self.tree.refresh_totals()
            except Exception:  # keep batching alive; the next tick retries
                log.exception("Background flush failed; retrying in %.0fs", FLUSH_INTERVAL_S)

    # --- batching -------------------------------------------------------------------------

    def release_soon(self, inode: Inode) -> None:
        """The last writer of ``inode`` closed: its leases go in the next batch."""
        with self._closed_lock:
            self._closed[inode.ino] = inode
        self._closing.set()

    def flush_soon(self) -> None:
        """Attributes changed in memory (chmod, chown, utimens): commit them in the next batch."""
        self._closing.set()

    def record_access(self, ino: int, idx: int, at: float) -> None:
        self.accesses[(ino, idx)] = at

    def flush(self) -> None:
        """One transaction: the leases of closed files, batched sizes, times and
        attributes, access times. A closed file whose lock a writer holds now
        waits for the next batch (taking it here could deadlock)."""
        with self._closed_lock:
            self._closing.clear()
            closed, self._closed = self._closed, {}
        accesses, self.accesses = self.accesses, {}
        # An operation of its own, and what it takes stamped under the tree's lock: another
        # flush (fsyncdir) may commit these first, and memory must not let them go meanwhile.
        operation = self.tree.operation_started()
        locked: list = []
        try:
            # The tree's lock before any inode's: unlink holds it while it waits for an inode's lock.
            with self.tree.lock:
                pending = [self.tree.use(self.tree.inodes[ino]) for ino in list(self.tree.unflushed)
                           if ino in self.tree.inodes]
            locked = [inode for inode in closed.values() if inode.lock.acquire(blocking=False)]
            due = {inode.ino: list(inode.leases) for inode in locked
                   if inode.write_handles == 0 and inode.leases and inode.ino in self.tree.inodes}
            releasing = [inode for inode in locked if inode.ino in due]
            if accesses or pending or releasing:
                with self.tree.changing(*pending, *releasing) as connection:
                    chunks.record_access(connection, accesses)
                    for inode in pending:
                        self.tree.persist(connection, inode)
                    for inode in releasing:
                        self.leases.release_in(connection, inode, due[inode.ino])
                for inode in releasing:
                    self.leases.released(inode, due[inode.ino])
                    del closed[inode.ino]
        finally:
            self.tree.operation_ended(operation)
            for inode in locked:
                inode.lock.release()
            if closed:  # busy, still written, or the commit failed: the next batch tries again
                with self._closed_lock:
                    for ino, inode in closed.items():
                        if inode.leases and inode.write_handles == 0 and inode.ino in self.tree.inodes:
                            self._closed.setdefault(ino, inode)
        if due:
            self.worker.wake_worker(soon=True)  # uploaded after uploadDelay anyway

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
                if self._free_estimate - size < floor:
                    self.files.settle()  # deleted files' space counts only once they are unlinked
                vfs = os.statvfs(self.cache.root)
                self._free_estimate = vfs.f_bavail * vfs.f_frsize
                self._measured_at = now
            if self._free_estimate - size < floor:
                return False
            self._free_estimate -= size
            return True

    def _measure_dirty(self) -> None:
        """The disk unuploaded chunks use: measured when they are few, else
        estimated from a random sample of them. Stat-ing every one each second
        took zero-fuse a core once a slow uplink left a hundred thousand behind;
        the figure only decides when writers slow down."""
        with self.database.read() as connection:
            count, sample = backlog.unuploaded_sample(connection, DIRTY_SAMPLE)
        self.dirty_bytes = self.cache.bytes_of(sample) * count // max(len(sample), 1)
        over = self.dirty_bytes > self.config.target_disk_usage_bytes
        if over != self.dirty_over_target:
            if over:
                log.info("Unuploaded data (%d MiB) exceeds targetDiskUsage (%d MiB): slowing writers until "
                         "zero-worker catches up", self.dirty_bytes >> 20, self.config.target_disk_usage_bytes >> 20)
            else:
                log.info("Unuploaded data is back under targetDiskUsage: writing at full speed")
        self.dirty_over_target = over
