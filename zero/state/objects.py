"""Remote objects, where their copies are, and what nobody references.

Written only by zero-worker. The reference count of an object is the number
of chunks rows naming it, computed through an index, so it cannot drift.
"""

from __future__ import annotations

import os
import secrets
import time

from sqlalchemy import Connection, Row, delete, exists, func, select, update

from zero.state import changelog, quarantine, remotes, schema
from zero.state.chunkstate import ChunkState

_o = schema.objects
_p = schema.placements
_c = schema.chunks


def get(connection: Connection, key: str) -> Row | None:
    return connection.execute(select(_o).where(_o.c.key == key)).first()


def remotes_holding(connection: Connection, key: str) -> list[str]:
    """Every remote with a copy, good or quarantined (reads, deletes)."""
    return [remote for (remote,) in connection.exec_driver_sql("SELECT remote FROM placements WHERE key = ?",
                                                               (key,))]


def good_holders(connection: Connection, key: str) -> list[str]:
    """Remotes whose copy is not quarantined: the only ones a dedup or a durability check may count."""
    return good_holders_of(connection, [key])[key] or []


# The uploader's statements, in plain SQL and a group at a time: it runs them
# inside write transactions that zero-fuse's creates wait for, and building
# them as SQLAlchemy expressions, a chunk at a time, cost about a millisecond
# per chunk under the lock (measured, docs/benchmarks.md "Fifth pass").
_GOOD_HOLDERS_SQL = (
    "SELECT o.key, p.remote FROM objects AS o"
    f" LEFT JOIN placements AS p ON p.key = o.key AND {quarantine.GOOD_COPY_SQL}"
    " WHERE o.key IN ({marks})")
_KEYS_PER_QUERY = 500  # under SQLite's limit on bound parameters
# ON CONFLICT DO NOTHING, never INSERT OR IGNORE: an OR IGNORE is imposed on the
# changelog triggers too, whose INSERT OR REPLACE renumbers the key for the backup.
_INSERT_INTENT_SQL = ("INSERT INTO objects (key, plain_bytes, stored_bytes, created, unreferenced_since)"
                      " VALUES (?, ?, 0, ?, NULL) ON CONFLICT (key) DO NOTHING")
_STORED_SQL = "UPDATE objects SET stored_bytes = ?, unreferenced_since = NULL WHERE key = ?"
_PLACE_SQL = "INSERT INTO placements (key, remote) VALUES (?, ?) ON CONFLICT (key, remote) DO NOTHING"


def good_holders_of(connection: Connection, keys) -> dict[str, list[str] | None]:
    """For each key: None if the state has no row for its object, else the
    remotes holding a good (not quarantined) copy. One query per group."""
    keys = list(dict.fromkeys(keys))
    found: dict[str, list[str]] = {}
    for start in range(0, len(keys), _KEYS_PER_QUERY):
        part = tuple(keys[start:start + _KEYS_PER_QUERY])
        sql = _GOOD_HOLDERS_SQL.format(marks=", ".join("?" * len(part)))
        for key, remote in connection.exec_driver_sql(sql, part):
            holders = found.setdefault(key, [])
            if remote is not None:
                holders.append(remote)
    return {key: found.get(key) for key in keys}


def record_intent(connection: Connection, key: str, plain_bytes: int) -> None:
    """Before an upload: the row makes a crash leave a known, collectable object."""
    record_intents(connection, {key: plain_bytes})


def record_intents(connection: Connection, plain_bytes_by_key: dict[str, int]) -> None:
    """record_intent for a group; a key already known keeps its row."""
    if plain_bytes_by_key:
        now = time.time()
        connection.exec_driver_sql(_INSERT_INTENT_SQL,
                                   [(key, size, now) for key, size in plain_bytes_by_key.items()])


def record_copy(connection: Connection, key: str, remote: str, stored_bytes: int) -> None:
    """A copy of an object whose row exists landed on ``remote``."""
    record_copies(connection, [(key, remote, stored_bytes)])


def record_copies(connection: Connection, copies) -> None:
    """(key, remote, stored_bytes) for each copy that landed; each key's row exists.
    The copy just stored replaces a quarantined one there (the quarantine is lifted).
    A copy on a remote being drained is not recorded: once `zero drain` found the
    remote empty it must stay so, whoever sent a copy there before hearing of
    the drain (the copy is an orphan for the sweep)."""
    copies = list(copies)
    if copies:
        draining = remotes.draining_names(connection)
        copies = [copy for copy in copies if copy[1] not in draining]
    if not copies:
        return
    connection.exec_driver_sql(_STORED_SQL, [(stored, key) for key, _remote, stored in copies])
    connection.exec_driver_sql(_PLACE_SQL, [(key, remote) for key, remote, _stored in copies])
    quarantine.lift_many(connection, [(key, remote) for key, remote, _stored in copies])


def mark_unreferenced(connection: Connection, now: float) -> int:
    """Stamp objects that just lost their last reference; clear the stamp of revived ones."""
    referenced = exists().where(_c.c.object_key == _o.c.key)
    stamped = connection.execute(update(_o).where(_o.c.unreferenced_since.is_(None), ~referenced)
                                 .values(unreferenced_since=now)).rowcount
    connection.execute(update(_o).where(_o.c.unreferenced_since.is_not(None), referenced)
                       .values(unreferenced_since=None))
    return stamped


# The fence between a collection and uploads (both processes: the worker's collector and
# `zero gc --delete` against the worker's uploader). A collection begins only while no
# upload is under way: an upload's placeholder row names no chunk until it finishes, so it
# looks unused, and the copy that landed would be swept as an orphan. Until the collection
# ends, no upload group starts: one that stored an object again under a key the collection
# had claimed would have its copy deleted after it called the chunk clean.
#
# Whether a collection still runs is its lock's to say (the caller's ``collector_alive``: an
# flock on <cache>/collect.lock, which one collection at a time holds and the kernel drops
# when it dies, in any pid namespace). The rows say since when and whose: one that has not
# said it is alive for COLLECTION_STALE_S holds nothing (a stopped or hung collector).
COLLECTION_KEY = "collection_under_way"  # meta: "<unix time it last said it was alive> <pid> <nonce>"
COLLECTION_STALE_S = 900.0
# A collection that found uploads under way asks new groups to wait for it (the same
# "<time> <token>"): a steady writer always has a chunk uploading, and without the ask the
# collection would be put off for good. The groups in flight finish meanwhile; the ask holds
# for COLLECTION_WAIT_S at most.
COLLECTION_WANTED_KEY = "collection_wanted"
COLLECTION_WAIT_S = 30.0


def collection_token() -> str:
    """Names one collection: its process, and a nonce (a restarted process may get the same pid)."""
    return f"{os.getpid()} {secrets.token_hex(8)}"


def begin_collection(connection: Connection, now: float, token: str) -> bool:
    """In the transaction that claims garbage, by the collection holding the lock (so
    any other fence or ask is a dead one's): False while a chunk is being uploaded,
    and then new upload groups are asked to wait (waiting_for_uploads)."""
    if connection.exec_driver_sql("SELECT 1 FROM chunks WHERE state = ? LIMIT 1",
                                  (ChunkState.UPLOADING.value,)).first() is not None:
        if not waiting_for_uploads(connection, now, token):
            connection.exec_driver_sql("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                       (COLLECTION_WANTED_KEY, f"{now!r} {token}"))
        return False
    connection.exec_driver_sql("DELETE FROM meta WHERE key = ?", (COLLECTION_WANTED_KEY,))
    connection.exec_driver_sql("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                               (COLLECTION_KEY, f"{now!r} {token}"))
    return True


def waiting_for_uploads(connection: Connection, now: float, token: str) -> bool:
    """Whether this collection's ask still holds new upload groups back, so trying again soon may begin it."""
    mark = _mark(connection, COLLECTION_WANTED_KEY)
    return mark is not None and mark[1] == token and now - mark[0] < COLLECTION_WAIT_S


def stop_waiting(connection: Connection, token: str) -> None:
    connection.exec_driver_sql("DELETE FROM meta WHERE key = ? AND value LIKE ?",
                               (COLLECTION_WANTED_KEY, f"% {token}"))


def still_alive(connection: Connection, now: float, token: str) -> bool:
    """A collection deleting for long says so, or uploads would take the fence as
    stale; False if the fence is no longer its own (it must stop deleting)."""
    return connection.exec_driver_sql("UPDATE meta SET value = ? WHERE key = ? AND value LIKE ?",
                                      (f"{now!r} {token}", COLLECTION_KEY, f"% {token}")).rowcount == 1


def end_collection(connection: Connection, token: str) -> None:
    connection.exec_driver_sql("DELETE FROM meta WHERE key = ? AND value LIKE ?", (COLLECTION_KEY, f"% {token}"))


def uploads_wait(connection: Connection, now: float, collector_alive) -> bool:
    """Whether upload groups must wait (checked in the transaction that starts them):
    a collection holds the fence, or asked for the groups in flight to finish."""
    return ((_fresh(connection, COLLECTION_KEY, now, COLLECTION_STALE_S)
             or _fresh(connection, COLLECTION_WANTED_KEY, now, COLLECTION_WAIT_S)) and collector_alive())


def _mark(connection: Connection, key: str) -> tuple[float, str] | None:
    """The fence's or the ask's row: (when it last said it was alive, whose token)."""
    row = connection.exec_driver_sql("SELECT value FROM meta WHERE key = ?", (key,)).first()
    if row is None:
        return None
    at, token = row[0].split(" ", 1)
    return float(at), token


def _fresh(connection: Connection, key: str, now: float, stale_s: float) -> bool:
    mark = _mark(connection, key)
    return mark is not None and now - mark[0] < stale_s


def claim_garbage(connection: Connection, older_than: float, limit: int = 500) -> list[tuple[str, list[str]]]:
    """Delete the rows of objects unreferenced since before ``older_than`` and
    return (key, remotes) so the caller deletes the copies after the commit.
    Rows go first: an uploader that meets a missing row uploads again."""
    referenced = exists().where(_c.c.object_key == _o.c.key)
    keys = [row.key for row in connection.execute(
        select(_o.c.key).where(_o.c.unreferenced_since.is_not(None), _o.c.unreferenced_since < older_than,
                               ~referenced).limit(limit))]
    # A retained restore point (a kept snapshot, the newest segment) may still name them.
    kept = changelog.referenced_by_retained_snapshots(connection, keys)
    keys = [key for key in keys if key not in kept]
    claimed = []
    for key in keys:
        claimed.append((key, remotes_holding(connection, key)))
        connection.execute(delete(_p).where(_p.c.key == key))
        connection.execute(delete(_o).where(_o.c.key == key))
        quarantine.forget_object(connection, key)
    return claimed


def unnamed_among(connection: Connection, keys) -> set[str]:
    """Which of ``keys`` no chunk names: rows waiting for the collector, or rows a restore
    brought from a snapshot whose line may have collected their objects since."""
    keys = list(dict.fromkeys(keys))
    unnamed: set[str] = set()
    for start in range(0, len(keys), _KEYS_PER_QUERY):
        part = tuple(keys[start:start + _KEYS_PER_QUERY])
        unnamed.update(row[0] for row in connection.exec_driver_sql(
            f"SELECT key FROM objects o WHERE key IN ({', '.join('?' * len(part))}) "
            "AND NOT EXISTS (SELECT 1 FROM chunks c WHERE c.object_key = o.key)", part))
    return unnamed


def known_keys(connection: Connection) -> set[str]:
    return {row.key for row in connection.execute(select(_o.c.key))}


def totals(connection: Connection) -> dict[str, int]:
    row = connection.execute(select(func.count(), func.coalesce(func.sum(_o.c.stored_bytes), 0))).first()
    return {"objects": row[0], "stored_bytes": row[1]}


def holders_among(connection: Connection, key: str, names) -> int:
    """How many of the remotes ``names`` hold a good (not quarantined) copy of ``key``."""
    names = list(names)
    if not names:
        return 0
    return sum(1 for remote in good_holders_of(connection, [key])[key] or () if remote in names)


def stored_bytes_by_remote(connection: Connection) -> dict[str, int]:
    """Bytes each remote holds for this filesystem, by the placement rows."""
    rows = connection.execute(select(_p.c.remote, func.coalesce(func.sum(_o.c.stored_bytes), 0))
                              .join(_o, _o.c.key == _p.c.key).group_by(_p.c.remote))
    return {row[0]: row[1] for row in rows}


def objects_by_remote(connection: Connection) -> dict[str, int]:
    return {row[0]: row[1] for row in connection.execute(
        select(_p.c.remote, func.count()).group_by(_p.c.remote))}


def keys_on(connection: Connection, remote: str, limit: int) -> list[str]:
    return [row.key for row in connection.execute(
        select(_p.c.key).where(_p.c.remote == remote).order_by(_p.c.key).limit(limit))]


def count_on(connection: Connection, remote: str) -> int:
    return connection.execute(select(func.count()).select_from(_p).where(_p.c.remote == remote)).scalar()


def forget_copy(connection: Connection, key: str, remote: str) -> None:
    """The remote's copy no longer counts (zero drain moved it elsewhere)."""
    connection.execute(delete(_p).where(_p.c.key == key, _p.c.remote == remote))
    quarantine.lift(connection, key, remote)


def unreferenced(connection: Connection) -> list[Row]:
    """Objects no chunk names now (key, stored_bytes, unreferenced_since: None until the
    collector first sees them so), for `zero gc`'s dry run. Reads only."""
    referenced = exists().where(_c.c.object_key == _o.c.key)
    return list(connection.execute(select(_o.c.key, _o.c.stored_bytes, _o.c.unreferenced_since).where(~referenced)))
