"""Upload dirty chunks that zero-fuse has let go of.

A chunk is uploaded once fuse released its write lease (last writer closed,
fsync, or uploadDelay of quiet) and it has been idle for uploadDelay, or at
once when fsync/zero sync asked, or when dirty data crowds the cache.
The upload is marked clean only if the chunk's version is still the one
read: a write in between leaves it dirty for the next round.
"""

from __future__ import annotations

import logging
import os
import time

from zero.cachedir import disk_bytes
from zero.errors import RemoteUnavailable, StateConflict
from zero.state import chunks, counters, objects, requests
from zero.worker import crashpoints
from zero.worker.context import WorkerContext

log = logging.getLogger(__name__)

BATCH = 64


class Uploader:
    def __init__(self, context: WorkerContext):
        self.context = context
        self.uploaded_bytes = 0

    def due(self, hurry: bool) -> list:
        """Chunks to upload now: the requested ones first, then the quiet ones."""
        config = self.context.config
        now = time.time()
        with self.context.database.read() as connection:
            requested = set(requests.pending_uploads(connection))
            rows = chunks.uploadable(connection, limit=10_000)
        due = [row for row in rows
               if hurry or row.ino in requested or row.last_access <= now - config.upload_delay_s]
        due.sort(key=lambda row: (row.ino not in requested, row.last_access))
        return due[:BATCH]

    def next_due_in(self) -> float | None:
        """Seconds until the next dirty chunk becomes quiet enough, if any."""
        with self.context.database.read() as connection:
            rows = chunks.uploadable(connection, limit=1)
        if not rows:
            return None
        return max(0.0, rows[0].last_access + self.context.config.upload_delay_s - time.time())

    def finish_requests(self) -> None:
        """An upload request is done once its inode has nothing unleased left dirty."""
        with self.context.database.write() as connection:
            for ino in requests.pending_uploads(connection):
                if not any(row.state in ("dirty", "uploading") and not row.leased
                           for row in chunks.all_rows_of(connection, ino)):
                    requests.done_upload(connection, ino)

    def upload(self, row) -> bool:
        """Upload one chunk; True if it is now clean."""
        context = self.context
        ino, idx, version = row.ino, row.idx, row.version
        try:
            with context.database.write() as connection:
                chunks.start_upload(connection, ino, idx, version)
        except StateConflict:
            return False  # fuse wrote to it again, or took it back: a later round
        crashpoints.crash("upload.started")
        try:
            path = context.cache.chunk_path(ino, idx)
            with open(path, "rb") as chunk_file:
                data = chunk_file.read()
                stored = disk_bytes(os.fstat(chunk_file.fileno()))
            key = context.codec.object_key(data)
            with context.database.write() as connection:
                known = objects.get(connection, key)
                holders = objects.remotes_holding(connection, key) if known else []
                if len(holders) >= context.config.replicas:
                    # The same bytes are stored already (dedup); the row's presence,
                    # checked in this transaction, keeps the collector off it.
                    chunks.finish_upload(connection, ino, idx, version, key, stored)
                    counters.bump(connection, "dedup_hits")
                    return True
                objects.record_intent(connection, key, len(data))
            crashpoints.crash("upload.intent")
            blob = context.codec.seal(data)
            holders = context.pool.put(context.remote_key(key), blob)
            crashpoints.crash("upload.sent")
            with context.database.write() as connection:
                if objects.get(connection, key) is None:
                    objects.record_intent(connection, key, len(data))  # the collector took it meanwhile
                for holder in holders:
                    objects.record_copy(connection, key, holder, len(blob))
                chunks.finish_upload(connection, ino, idx, version, key, stored)
                counters.bump(connection, "uploads")
                counters.bump(connection, "uploaded_bytes", len(data))
            self.uploaded_bytes += len(data)
            return True
        except StateConflict:
            return False  # a write landed during the upload: the chunk stays dirty
        except FileNotFoundError:
            # Truncated or deleted while uploading: its row went with it.
            self._give_back(ino, idx)
            return False
        except RemoteUnavailable as error:
            log.warning("Upload of chunk %d of inode %d postponed: %s", idx, ino, error)
            self._give_back(ino, idx)
            raise

    def _give_back(self, ino: int, idx: int) -> None:
        try:
            with self.context.database.write() as connection:
                chunks.abort_upload(connection, ino, idx)
        except StateConflict:
            pass  # fuse already sent it back to dirty, or it was deleted
