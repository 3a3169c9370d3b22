"""Delete remote objects nobody references any more.

An object is garbage once no chunk names it for gcGracePeriod. Its rows go
first, in a transaction that re-checks "still unreferenced"; its copies go
after the commit. An uploader that finds the row gone uploads again. A
remote object with no row at all (a crash between a collector's commit and
its deletes) is swept once it is older than the grace period, which also
covers an upload whose row is still being written.
"""

from __future__ import annotations

import logging
import math
import time

from zero.errors import RemoteUnavailable
from zero.remote import layout
from zero.state import counters, objects
from zero import crashpoints, locking
from zero.worker.context import WorkerContext

log = logging.getLogger(__name__)

COLLECT_LOCK = "collect"  # <cache>/collect.lock: held for a collection's length (objects.uploads_wait)
FENCE_REFRESH_S = 30.0  # how often a collection deleting says it is still at it (objects.COLLECTION_STALE_S)
BEGIN_RETRY_S = 0.2     # how often a collection waiting for the upload groups in flight looks again


class Collector:
    def __init__(self, context: WorkerContext):
        self.context = context
        self.waited_for_uploads = False  # the last collect() found uploads under way and deleted nothing
        self._fence_at = 0.0  # when this collection last said it holds the fence

    def collect(self, now: float | None = None, progress=None) -> int:
        """Returns how many objects were deleted. ``progress`` (a tqdm-like bar, for
        `zero gc --delete`) is told of each deletion and of how many are claimed."""
        now = time.time() if now is None else now
        grace = self.context.config.gc_grace_period_s
        writer = self.context.writer
        if writer is not None and not writer.confirm_now():
            # Another machine writes the filesystem: what this state calls unused may be its data.
            log.info("Not collecting: this cache is not the filesystem's writer (%s)", writer.role)
            return 0
        self.waited_for_uploads = False
        lock = locking.HeldLock(self.context.cache.lock_path(COLLECT_LOCK))
        if not lock.try_acquire():
            self.waited_for_uploads = True
            log.info("Not collecting now: another collection (zero-worker's, or zero gc) is under way")
            return 0
        try:
            return self._collect(now, grace, progress)
        finally:
            lock.release()

    def _collect(self, now: float, grace: float, progress) -> int:
        token = objects.collection_token()
        # Listed before the fence goes up: listing a large bucket takes long, and uploads
        # (and the fsyncs that wait for them) wait while it is up. Anything recorded after
        # a listing is known to the sweep, which reads the known keys under the fence.
        listings = self._list_remotes()
        claimed = self._begin(now, grace, token)
        if claimed is None:
            self.waited_for_uploads = True
            log.info("Not collecting now: uploads were under way for %.0f s, and the objects being stored look "
                     "unused until they finish; the next round collects",
                     objects.COLLECTION_WAIT_S)
            return 0
        try:
            crashpoints.crash("gc.claimed")
            if progress is not None:
                progress.total = len(claimed)
                progress.refresh()
            deleted = 0
            deleted_copies: set[tuple[str, str]] = set()
            for key, holders in claimed:
                if not self._keep_fence(token):
                    return deleted
                try:
                    self.context.pool.delete(self.context.remote_key(key), holders)
                    deleted += 1
                    deleted_copies.update((key, name) for name in holders)
                except RemoteUnavailable as error:
                    log.warning("Could not delete unused object %s yet (%s); the orphan sweep will retry", key, error)
                if progress is not None:
                    progress.update(1)
            deleted += self.sweep_orphans(now, listings, deleted_copies, token, progress)
        finally:
            with self.context.database.write() as connection:
                objects.end_collection(connection, token)
        if deleted:
            log.info("Collected %d unused object(s) from the remotes", deleted)
        return deleted

    def _begin(self, now: float, grace: float, token: str) -> list | None:
        """Put up the fence and claim what is garbage, in one transaction: the claimed
        (key, holders). While uploads are under way, new upload groups are asked to wait
        and this tries again until those in flight finish, for COLLECTION_WAIT_S at most;
        None if it could not begin."""
        deadline = time.monotonic() + objects.COLLECTION_WAIT_S
        while True:
            with self.context.database.write() as connection:
                objects.mark_unreferenced(connection, now)
                self._fence_at = time.time()
                if objects.begin_collection(connection, self._fence_at, token):
                    # Unused for at least the grace period: a stamp exactly ``grace`` old counts,
                    # so with grace 0 (`zero gc --grace 0`) what just lost its last reference goes now.
                    claimed = objects.claim_garbage(connection, older_than=math.nextafter(now - grace, math.inf))
                    if claimed:
                        counters.bump(connection, "objects_collected", len(claimed))
                    return claimed
                waiting = objects.waiting_for_uploads(connection, self._fence_at, token)
            if not waiting or time.monotonic() > deadline:
                with self.context.database.write() as connection:
                    objects.stop_waiting(connection, token)
                return None
            time.sleep(BEGIN_RETRY_S)

    def _keep_fence(self, token: str) -> bool:
        """Before each delete: whether the fence is still this collection's. A
        collection stopped for long (Ctrl-Z, a remote that hung) may have been
        taken for dead, and uploads may have stored again what it claimed: it stops."""
        now = time.time()
        if now - self._fence_at < FENCE_REFRESH_S:
            return True
        if now - self._fence_at < objects.COLLECTION_STALE_S / 2:
            with self.context.database.write() as connection:
                if objects.still_alive(connection, now, token):
                    self._fence_at = now
                    return True
        log.warning("Stopped collecting: this collection was held up for %.0f s and uploads may have gone on; the "
                    "next round collects the rest", now - self._fence_at)
        return False

    def _list_remotes(self) -> list:
        """(remote, its objects) for each remote that is ours and answering now."""
        listings = []
        for remote in self.context.pool.remotes:
            if remote.name not in self.context.pool.durable_names():
                continue  # not ours right now, or not answering: never sweep it
            try:
                listings.append((remote, list(remote.list(self.context.object_prefix))))
            except RemoteUnavailable as error:
                log.warning("Could not list %s for unused objects: %s", remote.name, error)
        return listings

    def sweep_orphans(self, now: float, listings: list, deleted_copies: set[tuple[str, str]], token: str,
                      progress=None) -> int:
        """Delete listed remote objects the state does not know, once older than the
        grace period; ``deleted_copies`` ((key, remote) of the claimed objects, listed
        before their rows went) are gone already."""
        grace = self.context.config.gc_grace_period_s
        deleted = 0
        with self.context.database.read() as connection:
            known = objects.known_keys(connection)
        for remote, listing in listings:
            if remote.name not in self.context.pool.durable_names():
                continue  # turned away since it was listed
            for remote_key, _size, mtime in listing:
                key = layout.parse_object_key(self.context.fs_id, remote_key)
                if key is None or key in known or mtime > now - grace or (key, remote.name) in deleted_copies:
                    continue  # None: not one of our objects
                if not self._keep_fence(token):
                    return deleted
                try:
                    remote.delete(remote_key)
                    deleted += 1
                except RemoteUnavailable as error:
                    log.warning("Could not delete orphan %s on %s: %s", remote_key, remote.name, error)
                if progress is not None:
                    progress.total = (progress.total or 0) + 1
                    progress.update(1)
        return deleted
