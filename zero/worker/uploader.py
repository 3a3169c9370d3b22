"""Upload dirty chunks that zero-fuse has let go of.

A chunk is uploaded once fuse released its write lease (last writer closed,
fsync, or uploadDelay of quiet) and it has been idle for uploadDelay, or at
once when fsync/zero sync asked, or when dirty data crowds the cache.
The upload is marked clean only if the chunk's version is still the one
read: a write in between leaves it dirty for the next round.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from dataclasses import dataclass, field

from zero.fsutil import settled_bytes
from zero.errors import CollectionUnderWay, RemoteUnavailable, StateConflict
from zero.state import chunks, counters, objects, remotes, requests
from zero import crashpoints, locking
from zero.worker.collector import COLLECT_LOCK
from zero.worker.context import WorkerContext
from zero.worker.fetcher import cache_block

log = logging.getLogger(__name__)

BATCH = 64
GROUP = 16    # chunks per group of commits; with 4 MiB chunks, 64 MiB in memory per group in flight
THREADS = 4   # parallel reads, seals and sends
GROUPS_IN_FLIGHT = 3  # groups uploading at once: a sequential writer hands over one chunk at a time


@dataclass
class _Upload:
    row: object
    data: bytes
    key: str
    stored: int
    written_ns: int  # the chunk file's st_mtime_ns: whether the evictor's last measure counted it
    holders: list = field(default_factory=list)  # remotes already holding a good copy (dedup)


class Uploader:
    def __init__(self, context: WorkerContext, still_ours=lambda names: set(names), on_group_done=lambda: None,
                 make_room=lambda files: None):
        self.context = context
        # Evicts so that chunks about to turn clean keep the cache under its target
        # (Evictor.make_room_for_clean): a sequential writer's chunks turn clean while it writes.
        self.make_room = make_room
        # Which remotes that took copies still carry their marker (RemoteKeeper.still_ours).
        self.still_ours = still_ours
        self.on_group_done = on_group_done  # the worker's loop looks again for due chunks
        self.uploaded_bytes = 0
        self._block = cache_block(context.cache.root)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._groups: concurrent.futures.ThreadPoolExecutor | None = None
        self._in_flight: dict[concurrent.futures.Future, set[tuple[int, int]]] = {}
        self._backlog: list = []  # due rows not submitted yet (no room then)
        self._requested: set[int] = set()  # inodes of the asked-for chunks due() last returned
        collect_lock = context.cache.lock_path(COLLECT_LOCK)
        self._collector_alive = lambda: locking.is_held(collect_lock)  # objects.uploads_wait

    def due(self, hurry: bool) -> list:
        """Chunks to upload now: the requested ones first, then the quiet ones.
        None while this worker may not write to the remotes (zero.meta.writer)."""
        if not self.context.may_write():
            return []
        config = self.context.config
        with self.context.database.read() as connection:
            requested = chunks.requested_uploadable(connection, limit=BATCH)
            quiet = [] if len(requested) >= BATCH else chunks.uploadable(
                connection, limit=BATCH, quiet_before=None if hurry else time.time() - config.upload_delay_s)
        asked = {(row.ino, row.idx) for row in requested}
        self._requested = {row.ino for row in requested}
        return (requested + [row for row in quiet if (row.ino, row.idx) not in asked])[:BATCH]

    def next_due_in(self) -> float | None:
        """Seconds until the next dirty chunk becomes quiet enough, if any (none while fenced)."""
        if not self.context.may_write():
            return None
        with self.context.database.read() as connection:
            rows = chunks.uploadable(connection, limit=1)
        if not rows:
            return None
        return max(0.0, rows[0].last_access + self.context.config.upload_delay_s - time.time())

    def finish_requests(self) -> None:
        """An upload request is done once its inode has nothing unleased left dirty."""
        with self.context.database.read() as connection:
            if not requests.any_upload_done(connection):
                return  # runs on every wake-up: no write transaction when there is nothing to do
        with self.context.database.write() as connection:
            requests.finish_done_uploads(connection)

    def upload(self, row) -> bool:
        """Upload one chunk; True if it is now clean."""
        return self.upload_batch([row]) == 1

    def upload_batch(self, rows) -> int:
        """Upload chunks in groups; returns how many are now clean.

        Each group costs three commits whatever its size (start, intent, finish)
        instead of three per chunk: the commits of a worker uploading small files
        one by one kept zero-fuse's creates waiting for the database (measured).
        Reading, hashing, sealing and sending run in parallel. Raises
        RemoteUnavailable after the batch if a remote failed (those chunks stay dirty).
        """
        done = 0
        unavailable: RemoteUnavailable | None = None
        if not self.context.may_write():
            return 0
        for start in range(0, len(rows), GROUP):
            group_done, error = self._upload_group(rows[start:start + GROUP])
            done += group_done
            unavailable = unavailable or error
        if unavailable is not None:
            raise unavailable
        return done

    # --- groups in flight (the worker's upload loop) ---------------------------------------

    def in_flight(self) -> int:
        return len(self._in_flight)

    def has_room(self) -> bool:
        return len(self._in_flight) < (1 if crashpoints.one_group_at_a_time() else GROUPS_IN_FLIGHT)

    def submit(self, rows) -> int:
        """Start uploading ``rows`` (from due()) beside the groups already in flight,
        leaving out chunks those hold; returns how many chunks were started.
        A sequential writer hands its chunks over one by one as it fills them:
        uploaded one after another they would leave fsync waiting for a backlog."""
        held = set().union(*self._in_flight.values())
        rows = [row for row in rows if (row.ino, row.idx) not in held]
        self._backlog = []
        if self._groups is None:
            self._groups = concurrent.futures.ThreadPoolExecutor(GROUPS_IN_FLIGHT,
                                                                 thread_name_prefix="zero-upload-group")
        started = 0
        for start in range(0, len(rows), GROUP):
            if not self.has_room():
                break
            group = rows[start:start + GROUP]
            if self._in_flight and len(group) < GROUP and not any(row.ino in self._requested for row in group):
                # Beside groups in flight, a small group of quiet chunks (small files) waits to
                # fill up: each group costs three commits and two looks at the markers.
                # Asked-for chunks (fsync, a sequential writer's) go at once.
                break
            future = self._groups.submit(self._upload_group_then_tell, group)
            self._in_flight[future] = {(row.ino, row.idx) for row in group}
            started += len(group)
        self._backlog = rows[started:]
        return started

    def next_rows(self, hurry: bool) -> list:
        """What to submit next: the rows left over from the last due() while they
        fill a group (a row gone stale since fails its compare-and-set and is
        skipped), else due() afresh. Asking the state once per group that finished cost the
        worker more than the uploads of small files."""
        return self._backlog if len(self._backlog) >= GROUP else self.due(hurry)

    def reap(self) -> bool:
        """Forget finished groups; True if one of them found a remote unavailable."""
        unavailable = False
        for future in [future for future in self._in_flight if future.done()]:
            del self._in_flight[future]
            error = future.exception()
            if isinstance(error, RemoteUnavailable):
                unavailable = True
            elif error is not None:
                log.error("Uploading a group of chunks failed; they went back to dirty and are tried again",
                          exc_info=error)
        return unavailable

    def wait_in_flight(self) -> None:
        concurrent.futures.wait(list(self._in_flight))
        self.reap()

    def _upload_group_then_tell(self, rows) -> None:
        try:
            _, unavailable = self._upload_group(rows)
        finally:
            self.on_group_done()
        if unavailable is not None:
            raise unavailable

    def _upload_group(self, rows) -> tuple[int, RemoteUnavailable | None]:
        context = self.context
        started = []
        with context.database.write() as connection:
            if objects.uploads_wait(connection, time.time(), self._collector_alive):
                # The collection may be about to delete a copy this group would store again,
                # or waits for the groups in flight to finish so that it can begin.
                return 0, CollectionUnderWay("uploads wait while a garbage collection deletes unused objects")
            # A drain just begun: this group places nothing there (the probe would tell the pool in 10 s).
            context.pool.set_draining(remotes.draining_names(connection))
            for row in rows:
                try:
                    chunks.start_upload(connection, row.ino, row.idx, row.version)
                    started.append(row)
                except StateConflict:
                    pass  # fuse wrote to it again, or took it back: a later round
        if not started:
            return 0, None
        try:
            return self._upload_started(started)
        except BaseException:
            self._give_back_all(started)  # else they stay uploading until the worker restarts
            raise

    def _upload_started(self, started) -> tuple[int, RemoteUnavailable | None]:
        context = self.context
        crashpoints.crash("upload.started")
        read = [result for result in self._parallel(self._read, started) if result is not None]
        self.make_room([(item.stored, item.written_ns) for item in read])
        done = 0
        to_send = []
        durable_names = set(context.pool.durable_names())
        confirmed = self._confirm_unnamed_copies(read, durable_names)
        with context.database.write() as connection:
            # Only good copies count: a quarantined (corrupt) one is never a dedup target,
            # and the put below may store a fresh copy on its remote, which repairs it.
            holders = objects.good_holders_of(connection, [item.key for item in read])
            intents = {}
            deduplicated = 0
            for item in read:
                item.holders = confirmed.get(item.key, holders[item.key] or [])
                if len([name for name in item.holders if name in durable_names]) >= context.config.replicas:
                    # The same bytes are stored already (dedup); the row's presence,
                    # checked in this transaction, keeps the collector off it.
                    if self._finish(connection, item):
                        deduplicated += 1
                else:
                    intents[item.key] = len(item.data)
                    to_send.append(item)
            objects.record_intents(connection, intents)
            counters.bump(connection, "dedup_hits", deduplicated)
        done += deduplicated
        if not to_send:
            return done, None
        crashpoints.crash("upload.intent")
        # Read the markers before writing too, so a remote that vanished (an empty
        # folder where a drive was mounted) is not written into at all.
        self.still_ours(context.pool.writable_names())
        sent = self._parallel(self._send, to_send)
        crashpoints.crash("upload.sent")
        took = {name for outcome in sent if not isinstance(outcome, RemoteUnavailable) for name in outcome[1]}
        ours = self.still_ours(took) if took else set()
        sent = [self._only_ours(outcome, ours) for outcome in sent]
        unavailable = None
        landed = []
        with context.database.write() as connection:
            # A copy sent to a remote whose drain began meanwhile is not recorded (record_copies):
            # a chunk left with fewer than `replicas` copies goes back to dirty, for a group
            # that places it elsewhere (clean, it would never be uploaded again).
            draining = remotes.draining_names(connection)
            for item, outcome in zip(to_send, sent):
                if not isinstance(outcome, RemoteUnavailable):
                    _blob_size, holders = outcome
                    copies = {name for name in [*item.holders, *holders] if name not in draining}
                    if len(copies) >= context.config.replicas:
                        landed.append((item, outcome))
                    else:
                        self._abort(connection, item.row)
                    continue
                # The pool logged the remote's change of health once; a line per chunk would flood.
                log.debug("Upload of chunk %d of inode %d postponed: %s", item.row.idx, item.row.ino, outcome)
                unavailable = outcome
                self._abort(connection, item.row)
            # Only what finished records its copies: a chunk written during its upload is
            # no longer 'uploading', so a collection may have begun and swept the copy it
            # sent as an orphan (decision 88); that copy is left for the sweep. The rows of
            # objects the collector took meanwhile come back (in this same transaction).
            finished = [(item, outcome) for item, outcome in landed if self._finish(connection, item)]
            objects.record_intents(connection, {item.key: len(item.data) for item, _ in finished})
            objects.record_copies(connection, [(item.key, holder, blob_size)
                                               for item, (blob_size, holders) in finished for holder in holders])
            uploaded = len(finished)
            uploaded_bytes = sum(len(item.data) for item, _ in finished)
            counters.bump_many(connection, {"uploads": uploaded, "uploaded_bytes": uploaded_bytes})
        self.uploaded_bytes += uploaded_bytes
        done += uploaded
        return done, unavailable

    def _confirm_unnamed_copies(self, read, durable_names: set[str]) -> dict[str, list[str]]:
        """For a dedup target no chunk names: the holders that really have it. A restored
        state's garbage rows came from a snapshot whose line may have collected their
        objects since; deduplicating onto one stored a fsynced file nowhere (decision 106).
        A row a chunk names is kept by the collector for as long as it is named."""
        with self.context.database.read() as connection:
            unnamed = objects.unnamed_among(connection, [item.key for item in read])  # new bytes have no row
            holders = objects.good_holders_of(connection, unnamed) if unnamed else {}
        copies = [(key, name) for key in sorted(unnamed) for name in holders[key] or () if name in durable_names]
        confirmed: dict[str, list[str]] = {key: [] for key in unnamed}
        for (key, name), present in zip(copies, self._parallel(self._holds, copies) if copies else []):
            if present:
                confirmed[key].append(name)
        return confirmed

    def _holds(self, copy: tuple[str, str]) -> bool:
        key, name = copy
        try:
            return self.context.pool.by_name(name).head(self.context.remote_key(key)) is not None
        except RemoteUnavailable:
            return False  # not confirmed: the bytes are sent again

    def _read(self, row) -> "_Upload | None":
        try:
            with open(self.context.cache.chunk_path(row.ino, row.idx), "rb") as chunk_file:
                data = chunk_file.read()
                # Not synced: a power cut that takes these bytes from the page cache
                # after the chunk is clean is undone at the next start (zero/meta/reboot.py).
                status = os.fstat(chunk_file.fileno())
        except FileNotFoundError:
            # Truncated or deleted while uploading (its row went with it), or a
            # new chunk whose file fuse never created: a later round, if any.
            self._give_back(row.ino, row.idx)
            return None
        return _Upload(row, data, self.context.codec.object_key(data), settled_bytes(status, self._block),
                       status.st_mtime_ns)

    def _send(self, item: "_Upload"):
        blob = self.context.codec.seal(item.data, object_key=item.key)
        try:
            return len(blob), self.context.pool.put(self.context.remote_key(item.key), blob, holders=item.holders)
        except RemoteUnavailable as error:
            return error

    def _only_ours(self, outcome, ours: set[str]):
        """Copies count only on remotes whose marker was still there after they
        landed; a chunk left short of replicas stays dirty for the next round."""
        if isinstance(outcome, RemoteUnavailable):
            return outcome
        blob_size, holders = outcome
        lost = [name for name in holders if name not in ours]
        if lost:
            return RemoteUnavailable(f"remote(s) {', '.join(lost)} lost their marker while the upload ran")
        return outcome

    def _finish(self, connection, item: "_Upload") -> bool:
        try:
            chunks.finish_upload(connection, item.row.ino, item.row.idx, item.row.version, item.key, item.stored)
            return True
        except StateConflict:
            return False  # a write landed during the upload: the chunk stays dirty

    @staticmethod
    def _abort(connection, row) -> None:
        try:
            chunks.abort_upload(connection, row.ino, row.idx)
        except StateConflict:
            pass  # fuse already sent it back to dirty, or it was deleted

    def _parallel(self, function, items) -> list:
        if len(items) == 1:
            return [function(items[0])]
        with self._pool_lock:  # groups in flight share one pool
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(THREADS, thread_name_prefix="zero-upload")
            pool = self._pool
        return list(pool.map(function, items))

    def close(self) -> None:
        if self._groups is not None:
            self._groups.shutdown(wait=True)
            self._groups = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _give_back_all(self, rows) -> None:
        """After an unexpected error: every chunk of the group still uploading goes back to dirty."""
        with self.context.database.write() as connection:
            for row in rows:
                self._abort(connection, row)

    def _give_back(self, ino: int, idx: int) -> None:
        try:
            with self.context.database.write() as connection:
                chunks.abort_upload(connection, ino, idx)
        except StateConflict:
            pass  # fuse already sent it back to dirty, or it was deleted
