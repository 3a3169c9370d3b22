"""The worker's metadata backup: journal segments within metadataBackupInterval
of a change (at once when fsync asks), a full snapshot every so often, and the
snapshots snapshotRetention no longer keeps deleted.

One step, ``back_up``: read the changes (or everything, for a snapshot) in one
read transaction, seal the segment with the codec, store it on every remote
that takes it, then, in one write transaction, advance the sequence, trim the
changelog, answer fsync's requests and record the restore point. A number is
never stored twice: the attempt is recorded before anything is sent, and
after an attempt that was not committed (a crash, or no remote took it) the
next segment takes the next number and is a full snapshot. A second copy under
the same number would hold changes that fsync was told are safe, and a remote
that kept only the first copy would restore without them (decision 89,
docs/dev/metadata_backup.md).

``context`` is anything with database, pool, codec, fs_id and config (the
worker's context, or restore's).
"""

from __future__ import annotations

import logging
import os
import threading
import time

from zero import crashpoints, wakeup
from zero.errors import RemoteUnavailable, WorkerUnavailable
from zero.meta import retention
from zero.meta.segment import JOURNAL, SNAPSHOT, Segment, encode
from zero.remote import layout
from zero.state import changelog, db as state_db

log = logging.getLogger(__name__)

SEQUENCE_META = "backup_sequence"            # the last segment stored in a remote
ATTEMPT_META = "backup_attempt"              # the last number sent (or maybe sent) to a remote
COVERED_META = "backup_covered"              # changelog seq that segment covers
SNAPSHOT_META = "backup_snapshot_sequence"   # the last snapshot's sequence
NEEDS_SNAPSHOT_META = "backup_needs_snapshot"  # "1": a remote missed a segment, or the state was restored
SNAPSHOT_EVERY_JOURNALS = 200    # a restore replays at most this many journals
SNAPSHOT_EVERY_S = 3600.0        # and a snapshot each hour with changes, for hourly retention
RETRY_AFTER_FAILURE_S = 10.0


class MetadataBackup:
    def __init__(self, context, clock=time.time):
        self.context = context
        self.clock = clock
        # One segment at a time: the stop's last segment must not race the thread's own (the
        # number read by both, and a late commit moving the sequence back).
        self.storing = threading.Lock()

    def _written(self, ino: int, idx: int) -> bool:
        """Whether a chunk never uploaded holds anything a hole would not: one leased and
        never written (a new file's first chunk, leased in the create) has no cache file,
        and a truncate into it makes one of zeros with no block on disk (a red-team run:
        restored, it read EIO). Only a file with no block is read, to be sure."""
        cache = getattr(self.context, "cache", None)
        if cache is None:
            return True
        path = cache.chunk_path(ino, idx)
        try:
            if os.stat(path).st_blocks:
                return True
            with open(path, "rb") as chunk_file:
                return bool(chunk_file.read().strip(b"\0"))
        except FileNotFoundError:
            return False

    # -- one step --------------------------------------------------------------------------

    def may_write(self) -> bool:
        """Only the filesystem's writer stores segments (zero.meta.writer); a context without
        the question (restore's, the unit tests') has no lease to ask."""
        return getattr(self.context, "may_write", lambda: True)()

    def _settings(self) -> dict[str, str]:
        return state_db.format_settings(self.context.database)

    def snapshot_due(self, settings: dict[str, str], now: float) -> bool:
        last_snapshot = int(settings.get(SNAPSHOT_META, 0))
        if not last_snapshot or settings.get(NEEDS_SNAPSHOT_META) == "1":
            return True
        if int(settings.get(SEQUENCE_META, 0)) - last_snapshot >= SNAPSHOT_EVERY_JOURNALS:
            return True
        with self.context.database.read() as connection:
            points = dict(changelog.snapshot_points(connection))
        return now - points.get(last_snapshot, 0.0) >= SNAPSHOT_EVERY_S

    def back_up(self, force_snapshot: bool = False) -> int | None:
        """Store one segment if there is anything to store; its sequence, or None.
        Raises RemoteUnavailable when no remote took it (nothing changes then)."""
        with self.storing:
            return self._back_up(force_snapshot)

    def _back_up(self, force_snapshot: bool) -> int | None:
        if not self.may_write():
            # Fenced or read-only: a segment from here would overwrite the writer's numbers.
            raise RemoteUnavailable("this cache is not the filesystem's writer; its metadata is not backed up")
        usable = self.context.pool.durable_names()
        if not any(remote.name in usable for remote in self.context.pool.remotes):
            # Nothing could be sent: no number taken, and no state read for it (an outage retries every 10 s).
            raise RemoteUnavailable("no remote can take metadata now: " + "; ".join(
                f"{remote.name} ({self.context.pool.health(remote.name)})" for remote in self.context.pool.remotes))
        settings = self._settings()
        now = self.clock()
        committed, attempted = int(settings.get(SEQUENCE_META, 0)), int(settings.get(ATTEMPT_META, 0))
        # An attempt that was never committed may be in some remotes: it keeps its number, and
        # a snapshot under the next one supersedes it wherever this one lands.
        uncommitted = attempted > committed
        snapshot = force_snapshot or uncommitted or self.snapshot_due(settings, now)
        sequence = max(committed, attempted) + 1
        begin_at = self.clock()
        with self.context.database.read() as connection:
            covered = changelog.current_sequence(connection)
            if not snapshot and not covered:
                return None
            segment = Segment(kind=SNAPSHOT if snapshot else JOURNAL, fs_id=self.context.fs_id, sequence=sequence,
                              taken_at=now, next_ino=changelog.next_inode(connection),
                              settings={"chunk_size": int(settings["chunk_size"]),
                                        "created_ns": int(settings["created_ns"])})
            if snapshot:
                segment.rows = {table: list(changelog.all_rows(connection, table, self._written))
                                for table in changelog.BACKED_UP}
            else:
                segment.rows, segment.deleted = changelog.changed_rows(connection, self._written)
        end_at = self.clock()
        blob = self.context.codec.seal(encode(segment))
        key = (layout.snapshot_key if snapshot else layout.journal_key)(self.context.fs_id, sequence)
        with self.context.database.write() as connection:
            state_db.set_meta(connection, ATTEMPT_META, str(sequence))
            # A point from now on: the copies may land before the commit below, or without it (a
            # crash), and the collector must not delete what they reference meanwhile.
            changelog.record_point(connection, sequence, segment.kind, begin_at, end_at)
        # Before anything is sent: from the first copy on, another cache as far along must see the fork.
        getattr(self.context, "segment_stored", lambda _sequence: None)(sequence)
        if uncommitted:
            log.info("Metadata segment %d was sent before a stop or a failure and never recorded; storing a full "
                     "snapshot as %d so no remote keeps it as the newest state", attempted, sequence)
        stored, refused, skipped = [], [], []
        for remote in self.context.pool.remotes:
            if remote.name not in usable:
                # Not ours, or not answering: never written into (the pool logged why, once).
                skipped.append(f"{remote.name} ({self.context.pool.health(remote.name)})")
                continue
            try:
                remote.put(key, blob)
                stored.append(remote.name)
            except RemoteUnavailable as error:
                refused.append(f"{remote.name} ({error})")
        if not stored:
            raise RemoteUnavailable(f"no remote took metadata {segment.kind} {sequence}: "
                                    f"{'; '.join(refused + skipped)}")
        crashpoints.crash("meta.stored")
        with self.context.database.write() as connection:
            state_db.set_meta(connection, SEQUENCE_META, str(sequence))
            state_db.set_meta(connection, COVERED_META, str(max(covered, int(settings.get(COVERED_META, 0)))))
            # A remote that missed this segment cannot replay the next journals alone: snapshot next time.
            state_db.set_meta(connection, NEEDS_SNAPSHOT_META, "1" if refused or skipped else "0")
            if snapshot:
                state_db.set_meta(connection, SNAPSHOT_META, str(sequence))
            changelog.trim(connection, covered)
            changelog.finish_requests(connection, covered)
            changelog.record_point(connection, sequence, segment.kind, begin_at, end_at)
        if refused:
            log.warning("Metadata %s %d is on %s but not on %s; the next segment will be a full snapshot",
                        segment.kind, sequence, ", ".join(stored), "; ".join(refused))
        log.info("Backed up the metadata to the remotes: %s %d, %d row(s), %d bytes sealed", segment.kind, sequence,
                 segment.row_count(), len(blob))
        if snapshot:
            self.prune()
        return sequence

    # -- retention ---------------------------------------------------------------------------

    def prune(self) -> int:
        """Delete snapshots snapshotRetention no longer keeps, and the journals
        before each remote's newest snapshot. Returns how many objects went."""
        rules = self.context.config.snapshot_retention
        fs_id = self.context.fs_id
        with self.context.database.read() as connection:
            known = dict(changelog.snapshot_points(connection))
        keep = retention.retained(list(known.items()), rules)
        deleted = 0
        pruned_everywhere = True
        newest_everywhere = None  # the lowest of the remotes' newest snapshots: journals before it are gone
        usable = self.context.pool.durable_names()
        for remote in self.context.pool.remotes:
            if remote.name not in usable:
                pruned_everywhere = False
                continue  # never delete from a remote that is not ours or not answering
            try:
                listing = list(remote.list(layout.meta_prefix(fs_id)))
                snapshots = {}
                journals = {}
                for key, _size, mtime in listing:
                    if (sequence := layout.parse_snapshot_key(fs_id, key)) is not None:
                        snapshots[sequence] = (key, known.get(sequence, mtime))
                    elif (sequence := layout.parse_journal_key(fs_id, key)) is not None:
                        journals[sequence] = key
                if not snapshots:
                    pruned_everywhere = False  # its journals, if any, stay restorable
                    continue
                keep_here = retention.retained([(s, at) for s, (_k, at) in snapshots.items()], rules)
                newest = max(snapshots)
                doomed = [key for s, (key, _at) in snapshots.items() if s not in keep_here]
                doomed += [key for s, key in journals.items() if s < newest]
                for key in doomed:
                    remote.delete(key)
                    deleted += 1
                newest_everywhere = newest if newest_everywhere is None else min(newest_everywhere, newest)
            except RemoteUnavailable as error:
                pruned_everywhere = False
                log.warning("Could not prune old metadata backups on %s yet: %s", remote.name, error)
        if pruned_everywhere:
            # Only now: a snapshot left on a remote that was away is still offered by `zero snapshots`
            # and `restore --at`, and the collector must keep what it references until it goes.
            with self.context.database.write() as connection:
                changelog.forget_points(connection, set(known) - keep)
                if newest_everywhere is not None:
                    changelog.forget_journal_points(connection, newest_everywhere)
        return deleted

    # -- the worker's thread -------------------------------------------------------------------

    def due(self, last_backup_at: float) -> bool:
        if not self.may_write():
            return False
        with self.context.database.read() as connection:
            if changelog.has_requests(connection):
                return True
            changed = changelog.has_changes(connection)
        return changed and self.clock() - last_backup_at >= self.context.config.metadata_backup_interval_s

    def run(self, stopping: threading.Event, listener: wakeup.WakeListener, wake_fuse) -> None:
        """Until ``stopping``: a segment once a change is metadataBackupInterval old,
        or at once when fsync asks (every wake-up re-checks the requests)."""
        interval = self.context.config.metadata_backup_interval_s
        last_backup_at = self.clock()
        while not stopping.is_set():
            generation = listener.generation
            wait_s = interval
            try:
                if self.due(last_backup_at):
                    self.back_up()
                    last_backup_at = self.clock()
                    wake_fuse()
            except RemoteUnavailable as error:
                log.warning("Could not back up the metadata (%s); trying again in %.0fs", error, RETRY_AFTER_FAILURE_S)
                wait_s = RETRY_AFTER_FAILURE_S
            if not stopping.is_set():
                listener.wait(generation, max(0.05, min(wait_s, last_backup_at + interval - self.clock())))


class BackupThread:
    """The worker's metadata-backup thread: start() after the worker's own, stop() before."""

    def __init__(self, context, listener: wakeup.WakeListener):
        self.backup = MetadataBackup(context)
        self.context = context
        self.listener = listener
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="zero-meta-backup", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.backup.run(self.stopping, self.listener, self.context.wake_fuse)
            except Exception:
                log.exception("The metadata backup failed; restarting it in %.0fs", RETRY_AFTER_FAILURE_S)
                self.stopping.wait(RETRY_AFTER_FAILURE_S)

    def stop(self) -> None:
        """Stop the thread, then store what changed since its last segment (as s3ql
        does at unmount), so a clean stop leaves the remotes up to date."""
        self.stopping.set()
        self.listener.poke()
        if self._thread is not None:
            self._thread.join(timeout=60)
            if self._thread.is_alive():
                log.warning("The metadata backup did not finish within 60 s (a remote hung?); the next start "
                            "stores what changed")
                return
        try:
            with self.context.database.read() as connection:
                changed = changelog.has_changes(connection)
            if changed and self.backup.may_write():
                self.backup.back_up()
        except RemoteUnavailable as error:
            log.warning("Could not store the last metadata changes before stopping (%s); the next start will", error)


# -- zero-fuse's side of fsync --------------------------------------------------------------------

def wait_backed_up(database, listener: wakeup.WakeListener, wake_worker, timeout_s: float,
                   why_no_answer=lambda: "zero-worker did not back up the metadata in time") -> None:
    """Return once a metadata segment in the remotes covers every change made so
    far (fsync with fsyncWaitsForUpload, after the data's upload). Concurrent
    callers share one segment; WorkerUnavailable after ``timeout_s``."""
    with database.write() as connection:
        wanted = changelog.request_backup(connection)
    if not wanted:
        return
    wake_worker()

    def covered():
        with database.read() as connection:
            done = int(state_db.get_meta(connection, COVERED_META) or 0)
        return True if done >= wanted else None

    wakeup.wait_for(listener, covered, timeout_s, lambda: WorkerUnavailable(why_no_answer()))
