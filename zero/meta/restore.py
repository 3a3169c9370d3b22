"""`zero restore`: rebuild a state database from the metadata in the remotes.

Given the remotes and the secret: find the filesystem, open its sealed keys,
pick the newest snapshot (or the newest at or before ``at``) and the journal
segments that follow it without a gap, open each with the codec (which
authenticates it), and write a fresh state beside the target, renamed into
place only when complete. Every chunk comes back ``remote``: the data faults
in lazily when read.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from zero.errors import ObjectCorrupt, ObjectMissing, RemoteUnavailable, RestoreError
from zero.meta import backup, keyring, writer
from zero.meta.segment import JOURNAL, SNAPSHOT, Segment, decode
from zero.remote import identity, layout
from zero.remote.codec import Codec
from zero.state import changelog, db as state_db, namespace, restored

log = logging.getLogger(__name__)

TABLE_ORDER = ("inodes", "dentries", "xattrs", "objects", "placements", "chunks")


@dataclass
class Catalog:
    """What the remotes hold of one filesystem's metadata: sequence -> (time, holders)."""

    fs_id: str
    snapshots: dict[int, tuple[float, list[str]]] = field(default_factory=dict)
    journals: dict[int, tuple[float, list[str]]] = field(default_factory=dict)
    reachable: list[str] = field(default_factory=list)

    def newest_sequence(self) -> int:
        return max([0, *self.snapshots, *self.journals])

    def plan(self, at: float | None = None) -> tuple[int, list[int]]:
        """(snapshot, journals after it) for the newest point, or the newest at or before ``at``."""
        candidates = [s for s, (taken_at, _h) in self.snapshots.items() if at is None or taken_at <= at]
        if not candidates:
            when = "" if at is None else " at or before the time asked for"
            raise RestoreError(f"no metadata snapshot of filesystem {self.fs_id}{when} is in the reachable "
                               f"remotes ({', '.join(self.reachable) or 'none'})")
        snapshot = max(candidates)
        journals = []
        sequence = snapshot + 1
        while sequence in self.journals and (at is None or self.journals[sequence][0] <= at):
            journals.append(sequence)
            sequence += 1
        return snapshot, journals


def catalog(remotes, fs_id: str) -> Catalog:
    found = Catalog(fs_id)
    for remote in remotes:
        try:
            listing = list(remote.list(layout.meta_prefix(fs_id)))
            # A drive that is not mounted leaves its mountpoint, an empty folder that lists as
            # empty: a restore that took it for a remote holding nothing numbered on over what
            # the drive holds. One of this filesystem's remotes has its marker (decision 104).
            if not listing and identity.read(remote, fs_id) is None:
                log.warning("Remote %s answers but holds nothing of filesystem %s, not even its marker (a drive "
                            "that is not mounted, an emptied folder, another bucket?); restoring from the others",
                            remote.name, fs_id)
                continue
        except (RemoteUnavailable, ObjectCorrupt) as error:
            log.warning("Remote %s is unreachable, restoring from the others: %s", remote.name, error)
            continue
        found.reachable.append(remote.name)
        for key, _size, mtime in listing:
            for parse, table in ((layout.parse_snapshot_key, found.snapshots), (layout.parse_journal_key, found.journals)):
                sequence = parse(fs_id, key)
                if sequence is not None:
                    taken_at, holders = table.get(sequence, (mtime, []))
                    table[sequence] = (min(taken_at, mtime), holders + [remote.name])
    return found


def find_fs_ids(remotes) -> set[str]:
    """Filesystems whose sealed keys the remotes hold (for when only the config is at hand)."""
    found = set()
    for remote in remotes:
        try:
            for key, _size, _mtime in remote.list(""):
                fs_id, _, rest = key.partition("/")
                if rest == f"{layout.KEYS_FOLDER}/{keyring.ENVELOPE_NAME}":
                    found.add(fs_id)
        except RemoteUnavailable as error:
            log.warning("Remote %s is unreachable: %s", remote.name, error)
    return found


def choose_fs_id(remotes, fs_id: str | None) -> str:
    if fs_id:
        return fs_id
    found = find_fs_ids(remotes)
    if not found:
        raise RestoreError("no zero filesystem's keys are in the configured remotes; check the config's "
                           "remotes (and that they are reachable)")
    if len(found) > 1:
        raise RestoreError(f"the remotes hold several filesystems ({', '.join(sorted(found))}); "
                           "choose one with --fs-id")
    return found.pop()


def fetch_segment(remotes, codec: Codec, fs_id: str, kind: str, sequence: int, holders: list[str]) -> Segment:
    key = (layout.snapshot_key if kind == SNAPSHOT else layout.journal_key)(fs_id, sequence)
    problems = []
    for remote in remotes:
        if remote.name not in holders:
            continue
        try:
            return decode(codec.open(remote.get(key)), kind, fs_id, sequence)
        except (ObjectMissing, ObjectCorrupt, RemoteUnavailable) as error:
            log.warning("Could not read metadata %s %d from %s, trying another remote: %s", kind, sequence,
                        remote.name, error)
            problems.append(f"{remote.name}: {error}")
    raise RestoreError(f"metadata {kind} {sequence} could not be read from any remote ({'; '.join(problems)})")


def _left_behind(remotes, codec: Codec, found: Catalog, restored_up_to: int) -> list[Segment]:
    """The segments after the last one restored (`restore --at`): a later line of the
    filesystem's history, still offered as restore points. Their objects get rows here
    (decision 105): with none, the orphan sweep deleted them, and an upload of the same
    content made a row too young for the points to keep."""
    behind = []
    for kind, table in ((SNAPSHOT, found.snapshots), (JOURNAL, found.journals)):
        for sequence in sorted(s for s in table if s > restored_up_to):
            try:
                behind.append(fetch_segment(remotes, codec, found.fs_id, kind, sequence, table[sequence][1]))
            except RestoreError as error:
                log.warning("Could not read metadata %s %d, a later point than the one restored (%s): the "
                            "objects only it names may be collected", kind, sequence, error)
    if behind:
        log.info("Keeping the objects of %d later metadata segment(s) while they remain restore points",
                 len(behind))
    return behind


@dataclass
class Restored:
    fs_id: str
    snapshot: int
    journals: list[int]
    rows: int
    path: Path
    writer_id: str
    sequence: int  # the newest segment in the remotes: where this state's own numbering continues
    unreached: list[str] = field(default_factory=list)  # configured remotes that did not answer
    never_uploaded: tuple[int, int] = (0, 0)  # (chunks, files) backed up before their upload: lost


def restore(database_path: Path, remotes, secret: keyring.Secret, fs_id: str | None = None,
            at: float | None = None, progress=None, read_only: bool = False, before_writing=None) -> Restored:
    """Rebuild the state at ``database_path`` (which must not exist). ``progress``
    is a tqdm-like factory (total=..., unit=...) or None. ``read_only`` makes a
    cache that never writes to the remotes (zero.meta.writer). ``before_writing(fs_id,
    newest_sequence)`` runs once the segments are read and before anything is written
    (the writer lease's check)."""
    database_path = Path(database_path)
    for existing in (database_path, Path(f"{database_path}-wal")):
        if existing.exists():
            raise RestoreError(f"{existing} exists: restore never overwrites a state; restore into a new cache "
                               "folder, or move this one away first")
    fs_id = choose_fs_id(remotes, fs_id)
    envelope = keyring.fetch_envelope(remotes, fs_id)
    data_keys = keyring.unseal(envelope, fs_id, secret)
    codec = Codec(data_keys.hash_key, data_keys.encryption_key)
    found = catalog(remotes, fs_id)
    snapshot, journals = found.plan(at)
    segments = [fetch_segment(remotes, codec, fs_id, SNAPSHOT, snapshot, found.snapshots[snapshot][1])]
    segments += [fetch_segment(remotes, codec, fs_id, JOURNAL, s, found.journals[s][1]) for s in journals]
    left_behind = [] if read_only else _left_behind(remotes, codec, found, segments[-1].sequence)
    if before_writing is not None:
        before_writing(fs_id, found.newest_sequence())
    total = sum(segment.row_count() for segment in segments)
    database_path.parent.mkdir(parents=True, exist_ok=True)
    building = database_path.with_name(database_path.name + ".restoring")
    for leftover in (building, Path(f"{building}-wal"), Path(f"{building}-shm")):
        leftover.unlink(missing_ok=True)  # a restore killed before its rename
    first = segments[0]
    database = state_db.open_database(building, first.settings["chunk_size"])
    bar = progress(total=total, unit="rows", desc="Restoring") if progress else None
    try:
        with database.write() as connection:
            changelog.delete_rows(connection, "inodes", [(1,)])  # the fresh root; the snapshot has the real one
            for segment in segments:
                for table in TABLE_ORDER:
                    changelog.delete_rows(connection, table, segment.deleted.get(table, ()))
                    changelog.apply_rows(connection, table, segment.rows.get(table, ()))
                    if bar is not None:
                        bar.update(len(segment.rows.get(table, ())) + len(segment.deleted.get(table, ())))
            restored.drop_unwritten(connection, int(first.settings["chunk_size"]))
            for ino in namespace.unlinked_inodes(connection):  # open, unlinked: the mount would purge them
                namespace.delete_inode(connection, ino)
            # Only what a later point's chunks name: those objects its line kept for it, while
            # the garbage rows of its segments may name objects collected since (decision 106).
            named = {row[2] for segment in left_behind for row in segment.rows.get("chunks", ())}
            for table in ("objects", "placements"):
                for segment in left_behind:
                    changelog.adopt_rows(connection, table, [row for row in segment.rows.get(table, ())
                                                             if row[0] in named])
            _adopt_identity(connection, found, segments, data_keys, envelope)
            unreached = [remote.name for remote in remotes if remote.name not in found.reachable]
            state_db.set_meta(connection, writer.RESTORED_WITHOUT_META, ",".join(unreached))
            if read_only:
                state_db.set_meta(connection, writer.MODE_META, writer.READ_ONLY)
            writer_id = state_db.get_meta(connection, writer.WRITER_ID_META)  # made fresh with the new state
            never_uploaded = restored.never_uploaded(connection)
        with database.engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        if bar is not None:
            bar.close()
        database.dispose()
    os.rename(building, database_path)
    log.info("Restored filesystem %s from snapshot %d and %d journal segment(s): %d rows", fs_id, snapshot,
             len(journals), total)
    return Restored(fs_id=fs_id, snapshot=snapshot, journals=journals, rows=total, path=database_path,
                    writer_id=writer_id, sequence=found.newest_sequence(), unreached=unreached,
                    never_uploaded=never_uploaded)


def _adopt_identity(connection, found: Catalog, segments: list[Segment], data_keys, envelope: bytes) -> None:
    """The restored state is that filesystem: its id, keys and format settings;
    its next segment continues after every number already in the remotes (they
    are write-once) and is a full snapshot."""
    last = segments[-1]
    for key, value in {
        "fs_id": found.fs_id,
        "hash_key": data_keys.hash_key.hex(),
        "encryption_key": data_keys.encryption_key.hex(),
        "chunk_size": str(last.settings["chunk_size"]),
        "created_ns": str(last.settings["created_ns"]),
        # The sealed keys as they are in the remotes: the worker keeps them, never re-seals.
        keyring.ENVELOPE_META: envelope.hex(),
        keyring.PUBLISHED_META: ",".join(sorted(found.reachable)),
        backup.SEQUENCE_META: str(found.newest_sequence()),
        backup.NEEDS_SNAPSHOT_META: "1",
        "restored_from": f"{segments[0].kind} {segments[0].sequence} + {len(segments) - 1} journal(s)",
    }.items():
        state_db.set_meta(connection, key, value)
    changelog.reset_after_restore(connection, max(segment.next_ino for segment in segments))
    # The snapshots still in the remotes stay restore points: GC here must not break them.
    for sequence, (taken_at, _holders) in found.snapshots.items():
        changelog.record_point(connection, sequence, SNAPSHOT, taken_at, taken_at)
    # Restoring an older point (--at) leaves the segments after it behind: journals too stay
    # points until this state's first snapshot prunes them.
    for sequence, (taken_at, _holders) in found.journals.items():
        if sequence > last.sequence:
            changelog.record_point(connection, sequence, JOURNAL, taken_at, taken_at)
    # And so do the segments restored, journals too: until this state's first segment, a
    # restore elsewhere reads them again (a red-team run lost an fsynced file to GC here).
    # Each was read between its own clock at the start and its store (the remotes' time).
    for segment in segments:
        stored_at = (found.snapshots if segment.kind == SNAPSHOT else found.journals)[segment.sequence][0]
        changelog.record_point(connection, segment.sequence, segment.kind, segment.taken_at,
                               max(stored_at, segment.taken_at))
