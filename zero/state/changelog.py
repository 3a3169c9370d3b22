"""What the metadata backup reads and restore writes: the changelog the
triggers fill, the rows of the backed-up tables, backup requests, and the
points a restore can return to.

Backed up is the namespace and the chunk map: inodes, dentries, xattrs, the
``(ino, idx, object_key)`` of every chunk, objects and placements. A chunk
whose content now is not in its object (written and not uploaded yet, or
changed since its upload) is backed up with no object: restored, its bytes
are known lost (EIO when read, a finding of fsck), not a hole or an older
version that reads back silently (decision 110). Not
backed up is the cache's own bookkeeping (chunk states, leases, versions,
last_access, pins, requests, counters, remote health): a restored cache
starts empty, every chunk ``remote``.

Triggers, not callers, record changes: every writer (fuse, the worker, the
CLI, a future one) is covered without remembering to. One changelog row per
changed key, renumbered by INSERT OR REPLACE, so a file written a thousand
times between two segments costs one row.
"""

from __future__ import annotations

import time
from typing import Iterable

from sqlalchemy import Connection

from zero.state import restored
from zero.state.chunkstate import UNUPLOADED

# table -> (columns in segment order, key columns, columns holding bytes)
BACKED_UP: dict[str, tuple[tuple[str, ...], tuple[str, ...], frozenset[str]]] = {
    "inodes": (("ino", "mode", "uid", "gid", "nlink", "size", "atime_ns", "mtime_ns", "ctime_ns", "rdev", "target"),
               ("ino",), frozenset({"target"})),
    "dentries": (("parent", "name", "ino"), ("parent", "name"), frozenset({"name"})),
    "xattrs": (("ino", "name", "value"), ("ino", "name"), frozenset({"name", "value"})),
    "chunks": (("ino", "idx", "object_key"), ("ino", "idx"), frozenset()),
    "objects": (("key", "plain_bytes", "stored_bytes", "created"), ("key",), frozenset()),
    "placements": (("key", "remote"), ("key", "remote"), frozenset()),
}

# Which changes each table records: (trigger event, condition). Chunks count when an
# upload finishes (its object may be the one it had: identical bytes written again) and
# when their object changes or they go: other state, lease and access-time moves are the
# cache's business. A chunk written since its upload goes out with its inode, which every
# write changes (changed_rows): a trigger on the write's own move, or on every new chunk,
# cost a create 10% more time in its transaction. Objects ignore the collector's stamp.
_EVENTS = {
    "inodes": [("INSERT", ""), ("UPDATE", ""), ("DELETE", "")],
    "dentries": [("INSERT", ""), ("UPDATE", ""), ("DELETE", "")],
    "xattrs": [("INSERT", ""), ("UPDATE", ""), ("DELETE", "")],
    "chunks": [("INSERT", "WHEN NEW.object_key IS NOT NULL"),
               ("UPDATE OF object_key, state", "WHEN OLD.object_key IS NOT NEW.object_key "
                "OR (OLD.state = 'uploading' AND NEW.state = 'clean')"), ("DELETE", "")],
    "objects": [("INSERT", ""), ("UPDATE OF plain_bytes, stored_bytes", ""), ("DELETE", "")],
    "placements": [("INSERT", ""), ("UPDATE", ""), ("DELETE", "")],
}


def _record(table: str, row: str) -> str:
    key = BACKED_UP[table][1]
    k2 = f"{row}.{key[1]}" if len(key) > 1 else "0"
    return f"INSERT OR REPLACE INTO changelog (tbl, k1, k2) VALUES ('{table}', {row}.{key[0]}, {k2});"


def record_chunks_not_uploaded(connection: Connection) -> None:
    """Upgrading a format-5 state, whose segments named a chunk's last object even
    when its content had changed since, and left out chunks never uploaded: put in
    the trigger that sees an upload finish, and count the chunks not uploaded now
    as changed, so the next segment says so."""
    connection.exec_driver_sql("DROP TRIGGER IF EXISTS changelog_chunks_update")
    install_triggers(connection)
    count_unuploaded_as_changed(connection)


def count_unuploaded_as_changed(connection: Connection) -> None:
    """Put every chunk not uploaded as it is now in the changelog. A write's move to
    dirty reaches a journal with the inode the write changes; where no inode change
    followed (zero-fuse killed before its batched flush, fsck marking a chunk dirty,
    an upgrade), the journals would go on naming its old object."""
    connection.exec_driver_sql("INSERT OR REPLACE INTO changelog (tbl, k1, k2) "
                               f"SELECT 'chunks', ino, idx FROM chunks WHERE state IN {_UNUPLOADED}")


def install_triggers(connection: Connection) -> None:
    """Create the triggers (idempotent): at format time and when upgrading a format-2 state."""
    for table, events in _EVENTS.items():
        for event, condition in events:
            name = f"changelog_{table}_{event.split()[0].lower()}"
            rows = {"INSERT": ["NEW"], "DELETE": ["OLD"]}.get(event.split()[0], ["OLD", "NEW"])
            body = " ".join(_record(table, row) for row in rows)
            connection.exec_driver_sql(
                f"CREATE TRIGGER IF NOT EXISTS {name} AFTER {event} ON {table} {condition} BEGIN {body} END")


# -- reading for a segment (inside one read transaction) ----------------------------------------

def current_sequence(connection: Connection) -> int:
    """The newest change recorded and not yet trimmed; 0 when everything is backed up."""
    return connection.exec_driver_sql("SELECT coalesce(max(seq), 0) FROM changelog").scalar()


def has_changes(connection: Connection) -> bool:
    return connection.exec_driver_sql("SELECT 1 FROM changelog LIMIT 1").first() is not None


def changed_rows(connection: Connection, written=None) -> tuple[dict[str, list[tuple]], dict[str, list[tuple]]]:
    """(table -> current rows, table -> keys of deleted rows) for every changed key.
    A chunk not uploaded as it is now goes with every changed inode it belongs to,
    as a row with no object (``written``: see _chunk_row)."""
    present: dict[str, list[tuple]] = {table: [] for table in BACKED_UP}
    deleted: dict[str, list[tuple]] = {table: [] for table in BACKED_UP}
    queries = {table: _select(table) + " WHERE " + " AND ".join(f"{column} = ?" for column in key)
               for table, (_columns, key, _blobs) in BACKED_UP.items()}
    queries["chunks"] = f"{_CHUNKS} WHERE ino = ? AND idx = ?"
    for table, k1, k2 in connection.exec_driver_sql("SELECT tbl, k1, k2 FROM changelog ORDER BY seq").all():
        key = (k1,) if len(BACKED_UP[table][1]) == 1 else (k1, k2)
        row = connection.exec_driver_sql(queries[table], key).first()
        backed_up = _chunk_row(row, written) if table == "chunks" and row is not None else row
        if backed_up is None:  # gone, or a lease taken again after a truncate, nothing written yet: a hole
            deleted[table].append(key)
        else:
            present[table].append(tuple(backed_up))
    named = {(ino, idx) for ino, idx, _key in present["chunks"]}
    # "+state": not the state index, which would walk every chunk not uploaded (0.3 s for
    # 600,000 of them) to find those of a few changed inodes (a review measured it).
    for row in connection.exec_driver_sql(
            f"{_CHUNKS} WHERE +state IN {_UNUPLOADED} AND ino IN (SELECT k1 FROM changelog WHERE tbl = 'inodes') "
            "ORDER BY ino, idx"):
        if (row.ino, row.idx) not in named and (backed_up := _chunk_row(row, written)) is not None:
            present["chunks"].append(backed_up)
    return present, deleted


def all_rows(connection: Connection, table: str, written=None) -> Iterable[tuple]:
    """Every backed-up row of ``table`` (for a snapshot), in key order."""
    columns, key, _blobs = BACKED_UP[table]
    if table == "chunks":
        rows = (_chunk_row(row, written) for row in connection.exec_driver_sql(f"{_CHUNKS} ORDER BY ino, idx"))
        return (row for row in rows if row is not None)
    return (tuple(row) for row in connection.exec_driver_sql(f"{_select(table)} ORDER BY {', '.join(key)}"))


_CHUNKS = "SELECT ino, idx, object_key, state FROM chunks"
_UNUPLOADED = "(" + ", ".join(f"'{state.value}'" for state in sorted(UNUPLOADED)) + ")"


def _chunk_row(row, written) -> tuple | None:
    """What a segment says of a chunk: (ino, idx, object_key), with no object when its
    content now is not in one (written and not uploaded yet, or changed since its
    upload: its old object would restore an older version, or a shorter one whose
    end reads as zeros). None, left out, for a chunk that never had an object and,
    ``written(ino, idx)`` says, no cache file: a lease taken before any write (a new
    file's first chunk is leased in the create), which reads as a hole."""
    if row.state not in _UNUPLOADED_VALUES:
        return (row.ino, row.idx, row.object_key)
    if row.object_key is None and written is not None and not written(row.ino, row.idx):
        return None
    return (row.ino, row.idx, None)


_UNUPLOADED_VALUES = frozenset(state.value for state in UNUPLOADED)


def next_inode(connection: Connection) -> int:
    """The inode counter (inode numbers are never reused)."""
    return connection.exec_driver_sql(
        "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'inodes'), 0)").scalar()


def _select(table: str) -> str:
    return f"SELECT {', '.join(BACKED_UP[table][0])} FROM {table}"


def trim(connection: Connection, up_to: int) -> int:
    """Forget changes a segment in the remotes covers. A key changed again since
    was renumbered above ``up_to`` and stays."""
    return connection.exec_driver_sql("DELETE FROM changelog WHERE seq <= ?", (up_to,)).rowcount


# -- fsync's requests ---------------------------------------------------------------------------

def request_backup(connection: Connection) -> int:
    """Ask for a segment covering every change so far; returns the changelog
    seq to wait for (0: nothing to wait for). Concurrent askers share one segment."""
    wanted = current_sequence(connection)
    if wanted:
        connection.exec_driver_sql("INSERT OR IGNORE INTO backup_requests (changelog_seq, requested_at) "
                                   "VALUES (?, ?)", (wanted, time.time()))
    return wanted


def has_requests(connection: Connection) -> bool:
    return connection.exec_driver_sql("SELECT 1 FROM backup_requests LIMIT 1").first() is not None


def finish_requests(connection: Connection, covered: int) -> int:
    return connection.exec_driver_sql("DELETE FROM backup_requests WHERE changelog_seq <= ?", (covered,)).rowcount


# -- restore points and the collector's rule -----------------------------------------------------

def record_point(connection: Connection, sequence: int, kind: str, begin_at: float, end_at: float) -> None:
    """A segment is (or may be, while it is being sent) in the remotes: a point to
    restore to, by `zero restore` (the newest) or `--at` (any journal after the newest
    snapshot too, as Catalog.plan walks them). Points go only when the remotes have
    deleted their segments (MetadataBackup.prune: forget_points, forget_journal_points)."""
    connection.exec_driver_sql("INSERT OR REPLACE INTO backup_points (sequence, kind, begin_at, end_at) "
                               "VALUES (?, ?, ?, ?)", (sequence, kind, begin_at, end_at))


def forget_journal_points(connection: Connection, before: int) -> None:
    """Every remote's newest snapshot is at least ``before`` and the journals before it are deleted."""
    connection.exec_driver_sql("DELETE FROM backup_points WHERE kind = 'journal' AND sequence < ?", (before,))


def snapshot_points(connection: Connection) -> list[tuple[int, float]]:
    """(sequence, taken at) of the snapshots this state knows, oldest first."""
    return [tuple(row) for row in connection.exec_driver_sql(
        "SELECT sequence, end_at FROM backup_points WHERE kind = 'snapshot' ORDER BY sequence")]


def forget_points(connection: Connection, sequences: Iterable[int]) -> None:
    sequences = list(sequences)
    if sequences:
        connection.exec_driver_sql("DELETE FROM backup_points WHERE sequence = ?", [(s,) for s in sequences])


# A stamp in objects.unreferenced_since may be a little earlier than the commit
# that really dropped the last reference (the collector reads its clock first).
POINT_MARGIN_S = 60.0


def referenced_by_retained_snapshots(connection: Connection, keys: Iterable[str]) -> set[str]:
    """Which of ``keys`` a restore point (a segment the remotes may still hold: a kept
    snapshot, a journal not yet superseded everywhere, one being sent, one a restore
    came from) may reference: objects that existed when the point was read and lost
    their last reference only after. The collector must not delete them."""
    protected = set()
    for key in keys:
        if connection.exec_driver_sql(
                "SELECT 1 FROM objects o JOIN backup_points p ON o.created <= p.end_at "
                "AND (o.unreferenced_since IS NULL OR o.unreferenced_since > p.begin_at - ?) "
                "WHERE o.key = ? LIMIT 1", (POINT_MARGIN_S, key)).first() is not None:
            protected.add(key)
    return protected


# -- restore --------------------------------------------------------------------------------------

def apply_rows(connection: Connection, table: str, rows: Iterable[tuple]) -> int:
    """Write restored rows (replacing what a key held). Chunks become `remote`
    through restored.insert_chunks: the state machine's own way in."""
    rows = list(rows)
    if not rows:
        return 0
    if table == "chunks":
        return restored.insert_chunks(connection, rows)
    columns = BACKED_UP[table][0]
    connection.exec_driver_sql(
        f"INSERT OR REPLACE INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", rows)
    return len(rows)


def adopt_rows(connection: Connection, table: str, rows: Iterable[tuple]) -> int:
    """Objects or placements a chunk of a segment a restore left behind names: added
    where this state has no row for the key, never replacing one it has. Unreferenced
    here, they stay while a point may still name them (referenced_by_retained_snapshots)."""
    assert table in ("objects", "placements"), table
    rows = list(rows)
    columns = BACKED_UP[table][0]
    # ON CONFLICT DO NOTHING, not OR IGNORE, which would be imposed on the changelog triggers too.
    if rows and table == "objects":
        connection.exec_driver_sql(
            f"INSERT INTO objects ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
            "ON CONFLICT (key) DO NOTHING", rows)
    elif rows:  # a copy of an object this state has a row for
        connection.exec_driver_sql("INSERT INTO placements (key, remote) SELECT ?1, ?2 "
                                   "WHERE EXISTS (SELECT 1 FROM objects WHERE key = ?1) "
                                   "ON CONFLICT (key, remote) DO NOTHING", rows)
    return len(rows)


def delete_rows(connection: Connection, table: str, keys: Iterable[tuple]) -> None:
    key = BACKED_UP[table][1]
    keys = list(keys)
    if keys:
        connection.exec_driver_sql(f"DELETE FROM {table} WHERE {' AND '.join(f'{c} = ?' for c in key)}", keys)


def reset_after_restore(connection: Connection, next_ino: int) -> None:
    """A restored state has backed up nothing yet (the worker's first segment is
    a snapshot), and keeps inode numbers unique across the restore."""
    connection.exec_driver_sql("DELETE FROM changelog")
    connection.exec_driver_sql("DELETE FROM backup_requests")
    connection.exec_driver_sql("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'inodes'", (next_ino,))
