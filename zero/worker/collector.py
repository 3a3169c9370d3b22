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
from zero.worker import crashpoints
from zero.worker.context import WorkerContext

log = logging.getLogger(__name__)


class Collector:
    def __init__(self, context: WorkerContext):
        self.context = context

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
        with self.context.database.write() as connection:
            objects.mark_unreferenced(connection, now)
            # Unused for at least the grace period: a stamp exactly ``grace`` old counts,
            # so with grace 0 (`zero gc --grace 0`) what just lost its last reference goes now.
            claimed = objects.claim_garbage(connection, older_than=math.nextafter(now - grace, math.inf))
            if claimed:
                counters.bump(connection, "objects_collected", len(claimed))
        crashpoints.crash("gc.claimed")
        if progress is not None:
            progress.total = len(claimed)
            progress.refresh()
        deleted = 0
        for key, holders in claimed:
            try:
                self.context.pool.delete(self.context.remote_key(key), holders)
                deleted += 1
            except RemoteUnavailable as error:
                log.warning("Could not delete unused object %s yet (%s); the orphan sweep will retry", key, error)
            if progress is not None:
                progress.update(1)
        deleted += self.sweep_orphans(now, progress)
        if deleted:
            log.info("Collected %d unused object(s) from the remotes", deleted)
        return deleted

    def sweep_orphans(self, now: float, progress=None) -> int:
        """Delete remote objects the state does not know, once older than the grace period."""
        grace = self.context.config.gc_grace_period_s
        prefix = self.context.object_prefix
        deleted = 0
        for remote in self.context.pool.remotes:
            if remote.name not in self.context.pool.durable_names():
                continue  # not ours right now, or not answering: never sweep it
            try:
                listing = list(remote.list(prefix))
            except RemoteUnavailable as error:
                log.warning("Could not list %s for unused objects: %s", remote.name, error)
                continue
            with self.context.database.read() as connection:
                known = objects.known_keys(connection)
            for remote_key, _size, mtime in listing:
                key = layout.parse_object_key(self.context.fs_id, remote_key)
                if key is None or key in known or mtime > now - grace:  # None: not one of our objects
                    continue
                try:
                    remote.delete(remote_key)
                    deleted += 1
                except RemoteUnavailable as error:
                    log.warning("Could not delete orphan %s on %s: %s", remote_key, remote.name, error)
                if progress is not None:
                    progress.total = (progress.total or 0) + 1
                    progress.update(1)
        return deleted
