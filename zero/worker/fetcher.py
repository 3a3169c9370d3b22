"""Fault evicted chunks back in when zero-fuse asks (and for prefetch, pins
and priming): download, verify, write a temporary file durably, then rename
it into place inside the transaction that marks the chunk clean, so a chunk
deleted meanwhile never gets a stray file.
"""

from __future__ import annotations

import logging
import os

from zero.fsutil import disk_bytes, fsync_dir
from zero.errors import ObjectCorrupt, ObjectMissing, RemoteUnavailable, StateConflict
from zero.state import chunks, counters, namespace, objects, quarantine, requests
from zero.worker import crashpoints
from zero.worker.context import WorkerContext

log = logging.getLogger(__name__)


class Fetcher:
    def __init__(self, context: WorkerContext, still_ours=lambda names: set(names),
                 copies_read=lambda key, verdicts: None):
        self.context = context
        # Which holders still carry their marker (RemoteKeeper.still_ours).
        self.still_ours = still_ours
        # Told which copies a fault-in read: remote -> None if good, else the ObjectCorrupt or
        # ObjectMissing (Scrubber.judge quarantines the bad ones, lifts good ones).
        self.copies_read = copies_read
        self.fetched_bytes = 0

    def pending(self, limit: int = 32) -> list:
        with self.context.database.read() as connection:
            return requests.pending_fetches(connection, limit)

    def fetch(self, ino: int, idx: int) -> None:
        """Serve one request; failures that retrying cannot fix are written
        back for the waiting reader, which then gets EIO."""
        context = self.context
        try:
            with context.database.write() as connection:
                row = chunks.get(connection, ino, idx)
                if row is None or not chunks.is_fetchable(row):
                    requests.done_fetch(connection, ino, idx)  # deleted, or local already
                    return
                chunks.start_fetch(connection, ino, idx)
                holders = objects.remotes_holding(connection, row.object_key)
                suspect = quarantine.bad_remotes(connection, row.object_key)
        except StateConflict:
            return
        crashpoints.crash("fetch.started")
        key = row.object_key
        tmp = os.path.join(context.cache.tmp, f"{ino}-{idx}.fetch")
        verdicts: dict[str, Exception | None] = {}
        try:
            # Quarantined copies are read last: one may have been put back by hand.
            data = context.pool.get(context.remote_key(key), holders,
                                    decode=lambda blob: context.codec.open(blob, expected_key=key), suspect=suspect,
                                    on_copy=verdicts.__setitem__)
            self._write_tmp(tmp, data)
            crashpoints.crash("fetch.downloaded")
            path = context.cache.chunk_path(ino, idx)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with context.database.write() as connection:
                chunks.finish_fetch(connection, ino, idx, disk_bytes(os.stat(tmp)))
                os.rename(tmp, path)
                crashpoints.crash("fetch.renamed")
                requests.done_fetch(connection, ino, idx)
                counters.bump(connection, "fault_ins")
            fsync_dir(os.path.dirname(path))
            self.fetched_bytes += len(data)
        except (ObjectMissing, ObjectCorrupt) as error:
            away = set(holders) - self.still_ours(holders)
            if away:
                # An unmounted drive leaves an empty folder, a swapped bucket another's
                # objects: the object looks missing, but the data is on the remote that is
                # away, not lost. The reader waits (EIO after faultInTimeout); the keeper
                # logged the remote's health once.
                self._give_back(ino, idx, tmp, error=None)
                raise RemoteUnavailable(f"remote(s) {', '.join(sorted(away))} holding chunk {idx} of inode "
                                        f"{ino} are unavailable") from error
            # Name the file, the byte range and where the object lives, so a person can restore it.
            log.error("%s cannot be read back from remote(s) %s (object %s): %s; reads of those bytes fail "
                      "with EIO until a good copy is put back there", self._describe(ino, idx),
                      ", ".join(holders) or "(none)", context.remote_key(key), error)
            self._give_back(ino, idx, tmp, error=str(error))
        except RemoteUnavailable as error:
            log.debug("Fault-in of chunk %d of inode %d postponed: %s", idx, ino, error)  # the pool logs the remote's health once
            self._give_back(ino, idx, tmp, error=None)
            raise
        except StateConflict:
            _remove(tmp)  # truncated or deleted while we downloaded
        except BaseException:
            self._give_back(ino, idx, tmp, error=None)
            raise
        finally:
            context.wake_fuse()
            if any(verdicts.values()) or set(verdicts) & suspect:
                self.copies_read(key, verdicts)

    def _describe(self, ino: int, idx: int) -> str:
        start = idx * self.context.chunk_size
        with self.context.database.read() as connection:
            path = namespace.path_of(connection, ino)
        name = path.decode("utf-8", "surrogateescape") if path else "an unlinked file"
        return f"Chunk {idx} (bytes {start}-{start + self.context.chunk_size - 1}) of {name} (inode {ino})"

    def _write_tmp(self, tmp: str, data: bytes) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)

    def _give_back(self, ino: int, idx: int, tmp: str, error: str | None) -> None:
        _remove(tmp)
        with self.context.database.write() as connection:
            try:
                chunks.abort_fetch(connection, ino, idx)
            except StateConflict:
                pass
            if error is not None:
                requests.fail_fetch(connection, ino, idx, error)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
