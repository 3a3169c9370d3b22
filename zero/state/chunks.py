"""Chunk rows: the one function that changes their state, the moves fuse and
the worker make, and what they ask to make them. The upload backlog's
read-only questions (promises, totals by state) are zero.state.backlog.

Every change of ``chunks.state`` goes through transition(): a compare-and-set
(``UPDATE … WHERE state IN :from``) that names the process owning the move,
is checked against ``chunkstate.TRANSITIONS``, and raises StateConflict when
it did not apply. docs/dev/chunk_lifecycle.md says what is on disk after each step.
"""

from __future__ import annotations

import enum
import functools
import time
from typing import Iterable

from sqlalchemy import Connection, Row, delete, func, select, update

from zero.errors import StateConflict
from zero.state import db, quarantine, schema
from zero.state.chunkstate import (
    CREATED, EVICTABLE, LOCAL, NEEDS_FETCH, UNUPLOADED, ChunkState, Owner, StateWriteGuard, check_move,
)

FUSE = Owner.FUSE
WORKER = Owner.WORKER

D, U, C, R, F = (ChunkState.DIRTY, ChunkState.UPLOADING, ChunkState.CLEAN, ChunkState.REMOTE,
                 ChunkState.FETCHING)

_c = schema.chunks
_COLUMNS = frozenset(_c.c.keys())


@functools.lru_cache(maxsize=64)
def _transition_sql(from_count: int, one_chunk: bool, where: tuple[str, ...], values: tuple[str, ...]) -> str:
    """The compare-and-set statement, built once per shape. Plain SQL: leases run
    it on the first write to every chunk, where building a Core statement would
    cost ten times what SQLite needs to run it (see zero.state.namespace)."""
    unknown = (set(where) | set(values)) - _COLUMNS
    if unknown:
        raise ValueError(f"chunks has no column {', '.join(sorted(unknown))}")
    sets = ", ".join(["state = ?", *(f"{name} = ?" for name in values)])
    conditions = [f"state IN ({', '.join('?' * from_count)})"]
    if one_chunk:
        conditions += ["ino = ?", "idx = ?"]
    conditions += [f"{name} = ?" for name in where]
    return f"UPDATE chunks SET {sets} WHERE {' AND '.join(conditions)}"


def transition(connection: Connection, owner: Owner, from_states: Iterable[ChunkState], to_state: ChunkState,
               *, ino: int | None = None, idx: int | None = None, where: dict | None = None,
               values: dict | None = None) -> int:
    """The one way a chunk's state changes: a compare-and-set checked against
    chunkstate.TRANSITIONS.

    With ``ino`` and ``idx`` it moves that chunk and raises StateConflict unless
    exactly it moved; without them (crash recovery) it moves every chunk in
    ``from_states`` and returns how many. ``where`` adds equality conditions
    (``version``, ``leased``, ``pinned``); ``values`` sets other columns too.
    """
    from_states = tuple(from_states)
    check_move(owner, from_states, to_state)
    where = where or {}
    values = values or {}
    one_chunk = ino is not None
    sql = _transition_sql(len(from_states), one_chunk, tuple(where), tuple(values))
    params = (to_state.value, *values.values(), *(s.value for s in from_states),
              *((ino, idx) if one_chunk else ()), *where.values())
    with StateWriteGuard.allowing():
        moved = connection.exec_driver_sql(sql, params).rowcount
    if one_chunk and moved != 1:
        current = connection.exec_driver_sql("SELECT state FROM chunks WHERE ino = ? AND idx = ?",
                                             (ino, idx)).scalar()
        raise StateConflict(
            f"chunk {ino}-{idx}: expected {'/'.join(s.value for s in from_states)}"
            f"{' with ' + str(where) if where else ''}, found {current or 'no chunk'}")
    return moved


class Readiness(enum.Enum):
    """What a reader or writer of a chunk must do, as the state answers it."""

    HOLE = "hole"                    # nothing was written there: it reads as zeros
    HERE = "here"                    # the cache file holds it (or will, once the lease holder writes)
    FETCH = "fetch"                  # only in a remote: fault it in
    EVICTION_UNFINISHED = "settle"   # clean but its file is gone: an eviction is committing or was killed


def readiness(connection: Connection, ino: int, idx: int, file_exists) -> Readiness:
    """Where chunk (ino, idx) can be read from, for a reader that found no cache file."""
    row = connection.exec_driver_sql("SELECT state FROM chunks WHERE ino = ? AND idx = ?", (ino, idx)).first()
    if row is None:
        return Readiness.HOLE
    state = ChunkState(row.state)
    if state in NEEDS_FETCH:
        return Readiness.FETCH
    if state in UNUPLOADED:
        # A new chunk whose writer took the lease but has not created the file yet:
        # nothing written there, a hole; or the file appeared since the caller looked.
        return Readiness.HERE if file_exists() else Readiness.HOLE
    return Readiness.HERE if file_exists() else Readiness.EVICTION_UNFINISHED


def get(connection: Connection, ino: int, idx: int) -> Row | None:
    # Plain SQL, as every statement a fault-in or an eviction runs: a sequential
    # reader of evicted data makes the worker run them dozens of times a second.
    return connection.exec_driver_sql("SELECT * FROM chunks WHERE ino = ? AND idx = ?", (ino, idx)).first()


# --- zero-fuse's moves -------------------------------------------------------------

def take_lease(connection: Connection, ino: int, idx: int, pinned: bool = False,
               file_exists=lambda: True) -> Readiness:
    """Mark a chunk dirty and leased before fuse writes to it.

    Returns HERE when the lease is held; FETCH when the chunk must be faulted
    in first; EVICTION_UNFINISHED when ``file_exists`` says a clean chunk's
    file is gone: a worker killed between unlinking the file and committing
    `remote`, whose restart must finish the eviction first (taking the lease
    would re-create the chunk empty). ``file_exists`` is called only for a
    clean chunk, inside this transaction, before the row turns dirty (fuse
    syncs the file there, decision 76). Runs on the first write to every chunk.
    """
    row = db.run(connection, "SELECT state, version FROM chunks WHERE ino = ? AND idx = ?", (ino, idx)).fetchone()
    if row is None:
        db.run(connection, "INSERT INTO chunks (ino, idx, state, version, leased, stored_bytes, last_access, pinned) "
                           "VALUES (?, ?, ?, 1, 1, 0, ?, ?)", (ino, idx, CREATED[FUSE].value, time.time(), pinned))
        return Readiness.HERE
    state, version = ChunkState(row[0]), row[1]
    if state in NEEDS_FETCH:
        return Readiness.FETCH
    if state in EVICTABLE and not file_exists():
        return Readiness.EVICTION_UNFINISHED
    transition(connection, FUSE, [state], D, ino=ino, idx=idx, values={"leased": 1, "version": version + 1})
    return Readiness.HERE


def lease_new_chunk(connection: Connection, ino: int, idx: int) -> None:
    """The lease of a chunk that cannot have a row yet (a file being created),
    taken in the create's own transaction: the first write then costs no commit."""
    db.run(connection, "INSERT INTO chunks (ino, idx, state, version, leased, stored_bytes, last_access, pinned) "
                       "VALUES (?, ?, ?, 1, 1, 0, ?, 0)", (ino, idx, CREATED[FUSE].value, time.time()))


def drop_unwritten(connection: Connection, ino: int, indexes: Iterable[int]) -> None:
    """Delete rows of chunks leased in advance and never written: there is
    nothing to upload, and a row without a file would read as a hole anyway."""
    params = [(ino, idx) for idx in indexes]
    if params:
        db.run_many(connection, "DELETE FROM chunks WHERE ino = ? AND idx = ? AND leased = 1", params)


def release_leases(connection: Connection, ino: int, indexes: Iterable[int],
                   written_at: dict[int, float] | None = None) -> None:
    """Hand chunks to the worker; last_access dates the last write (``written_at``,
    wall-clock seconds by index; now if not given), which the upload delay counts
    from and eviction orders by."""
    now = time.time()
    params = [((written_at or {}).get(idx, now), ino, idx) for idx in indexes]
    if params:
        db.run_many(connection, "UPDATE chunks SET leased = 0, last_access = ? WHERE ino = ? AND idx = ?", params)


def release_all_leases(connection: Connection) -> int:
    """At mount: no handle survives a restart, so no lease does either."""
    return connection.execute(update(_c).where(_c.c.leased.is_(True)).values(leased=False)).rowcount


def drop_from(connection: Connection, ino: int, first_idx: int) -> list[int]:
    """Delete chunk rows from ``first_idx`` on (truncate); returns their numbers."""
    indexes = [row.idx for row in connection.execute(
        select(_c.c.idx).where(_c.c.ino == ino, _c.c.idx >= first_idx))]
    if indexes:
        connection.execute(delete(_c).where(_c.c.ino == ino, _c.c.idx >= first_idx))
        connection.execute(delete(schema.fetch_requests).where(
            schema.fetch_requests.c.ino == ino, schema.fetch_requests.c.idx >= first_idx))
    return indexes


def delete_chunk(connection: Connection, ino: int, idx: int) -> None:
    connection.execute(delete(_c).where(_c.c.ino == ino, _c.c.idx == idx))


def record_access(connection: Connection, accesses: dict[tuple[int, int], float]) -> None:
    if accesses:
        connection.exec_driver_sql("UPDATE chunks SET last_access = ? WHERE ino = ? AND idx = ?",
                                   [(at, ino, idx) for (ino, idx), at in accesses.items()])


def remote_indexes(connection: Connection, ino: int, indexes: Iterable[int]) -> list[int]:
    """Which of ``indexes`` are evicted, not being fetched and have an object to
    fetch (what prefetch asks for; a chunk restored without one is lost, and only
    a reader's request reports it). Looked up by key: reading every evicted chunk
    of the file took 39 ms a call for a 50 GiB film, once per chunk read."""
    wanted = sorted(set(indexes))
    if not wanted:
        return []
    return [row[0] for row in connection.exec_driver_sql(
        f"SELECT idx FROM chunks WHERE state = ? AND ino = ? AND idx IN ({', '.join('?' * len(wanted))}) "
        "AND object_key IS NOT NULL ORDER BY idx", (R.value, ino, *wanted))]


def state_in(states, column: str = "state") -> tuple[str, tuple[str, ...]]:
    """``<column> IN (?, ...)`` and its parameters, for a set of chunk states in plain SQL."""
    values = tuple(sorted(state.value for state in states))
    return f"{column} IN ({', '.join('?' * len(values))})", values


def local_indexes(connection: Connection, ino: int) -> list[int]:
    """Chunks of ``ino`` whose cache file holds the content."""
    local, values = state_in(LOCAL)
    return [row[0] for row in connection.exec_driver_sql(
        f"SELECT idx FROM chunks WHERE ino = ? AND {local}", (ino, *values))]


def all_rows(connection: Connection) -> list[Row]:
    return connection.execute(select(_c)).all()


def recently_written_clean(connection: Connection, window_s: float) -> list[Row]:
    """Clean chunks whose last write or read is within ``window_s`` of the newest
    one recorded (zero.meta.reboot: the last activity before a restart)."""
    newest = connection.execute(select(func.max(_c.c.last_access))).scalar()
    if newest is None:
        return []
    return connection.execute(select(_c).where(_c.c.state == C.value,
                                               _c.c.last_access >= newest - window_s)).all()


def all_rows_of(connection: Connection, ino: int) -> list[Row]:
    return connection.execute(select(_c).where(_c.c.ino == ino).order_by(_c.c.idx)).all()


# --- zero-worker's moves -----------------------------------------------------------

def uploadable(connection: Connection, limit: int, quiet_before: float | None = None) -> list[Row]:
    """Dirty chunks fuse has let go of, oldest first; with ``quiet_before``,
    only those untouched since then. Plain SQL, as requested_uploadable()."""
    sql = "SELECT * FROM chunks WHERE state = ? AND leased = 0"
    params: tuple = (D.value,)
    if quiet_before is not None:
        sql += " AND last_access <= ?"
        params += (quiet_before,)
    return connection.exec_driver_sql(sql + " ORDER BY last_access LIMIT ?", (*params, limit)).all()


def requested_uploadable(connection: Connection, limit: int) -> list[Row]:
    """Dirty chunks fuse has let go of whose upload was asked for (fsync, zero
    sync), in the order asked. Plain SQL and one query whatever the number of
    requests: the uploader asks on every wake-up and for every few groups, and
    a `zero sync` of thousands of small files asks for thousands of inodes."""
    return connection.exec_driver_sql(
        "SELECT c.* FROM upload_requests AS r JOIN chunks AS c ON c.ino = r.ino"
        " WHERE c.state = ? AND c.leased = 0 ORDER BY r.requested_at, c.ino, c.idx LIMIT ?",
        (D.value, limit)).all()


def start_upload(connection: Connection, ino: int, idx: int, version: int) -> None:
    transition(connection, WORKER, [D], U, ino=ino, idx=idx, where={"version": version, "leased": 0})


def finish_upload(connection: Connection, ino: int, idx: int, version: int, object_key: str,
                  stored_bytes: int) -> None:
    transition(connection, WORKER, [U], C, ino=ino, idx=idx, where={"version": version},
               values={"object_key": object_key, "stored_bytes": stored_bytes})


def abort_upload(connection: Connection, ino: int, idx: int) -> None:
    transition(connection, WORKER, [U], D, ino=ino, idx=idx)


def _durable_copies(durable_on, good_only: bool = True) -> object:
    """Copies of the chunk's object on the remotes ``durable_on``; quarantined ones
    count only with ``good_only`` off (a bad copy is still the remote's to hold)."""
    _p = schema.placements
    query = select(func.count()).select_from(_p).where(_p.c.key == _c.c.object_key,
                                                       _p.c.remote.in_(list(durable_on)))
    if good_only:
        query = query.where(quarantine.good_copy_of(_p.c.key))
    return query.scalar_subquery()


def eviction_candidates(connection: Connection, limit: int, durable_on=None, replicas: int = 1) -> list[Row]:
    """Clean, unleased, unpinned chunks, least recently used first; with
    ``durable_on``, only those whose object has ``replicas`` copies on those
    remotes (invariant 2: evict only what is durable where it counts)."""
    evictable, values = state_in(EVICTABLE)
    sql = f"SELECT * FROM chunks WHERE {evictable} AND leased = 0 AND pinned = 0"
    params = [*values]
    if durable_on is not None:
        durable_on = list(durable_on)
        sql += (" AND (SELECT count(*) FROM placements AS p WHERE p.key = chunks.object_key"
                f" AND p.remote IN ({', '.join('?' * len(durable_on))}) AND {quarantine.GOOD_COPY_SQL}) >= ?")
        params += [*durable_on, replicas]
    return connection.exec_driver_sql(sql + " ORDER BY last_access LIMIT ?", (*params, limit)).all()


def stranded(connection: Connection, configured) -> tuple[int, int]:
    """(chunks, files) evicted from the cache whose object has no copy on any
    of the ``configured`` remotes: what removing the other remotes would make
    unreadable."""
    query = select(func.count(), func.count(func.distinct(_c.c.ino))).where(
        _c.c.state.in_([s.value for s in NEEDS_FETCH]), _c.c.object_key.isnot(None),
        _durable_copies(configured, good_only=False) == 0)
    row = connection.execute(query).first()
    return row[0], row[1]


def mark_evicted(connection: Connection, ino: int, idx: int) -> None:
    transition(connection, WORKER, [C], R, ino=ino, idx=idx, where={"leased": 0, "pinned": 0},
               values={"stored_bytes": 0})


def start_fetch(connection: Connection, ino: int, idx: int) -> Row:
    transition(connection, WORKER, [R], F, ino=ino, idx=idx)
    return get(connection, ino, idx)


def finish_fetch(connection: Connection, ino: int, idx: int, stored_bytes: int, fetched_at: float) -> None:
    """``fetched_at`` (unix time) becomes its last access: fetched for a reader
    that has not read it yet, it is not the next eviction victim. A guess
    (priming) passes the last access the row already had."""
    transition(connection, WORKER, [F], C, ino=ino, idx=idx,
               values={"stored_bytes": stored_bytes, "last_access": fetched_at})


def abort_fetch(connection: Connection, ino: int, idx: int) -> None:
    transition(connection, WORKER, [F], R, ino=ino, idx=idx)


def recover_interrupted(connection: Connection) -> dict[str, int]:
    """Worker start: nothing is mid-upload or mid-fetch after a restart."""
    return {"uploading": transition(connection, WORKER, [U], D),
            "fetching": transition(connection, WORKER, [F], R)}


def set_stored_bytes(connection: Connection, ino: int, idx: int, stored_bytes: int) -> None:
    connection.execute(update(_c).where(_c.c.ino == ino, _c.c.idx == idx).values(stored_bytes=stored_bytes))


def recently_evicted(connection: Connection, limit: int) -> list[Row]:
    """Remote chunks, most recently used first, each with its object's
    ``plain_bytes`` (what it will take in the cache): what priming brings back.
    Not one that names no object (never uploaded): nothing can bring it back."""
    objects = schema.objects
    return connection.execute(select(_c, objects.c.plain_bytes)
                              .select_from(_c.outerjoin(objects, objects.c.key == _c.c.object_key))
                              .where(_c.c.state == R.value, _c.c.object_key.isnot(None))
                              .order_by(_c.c.last_access.desc()).limit(limit)).all()


def referencing(connection: Connection, object_key: str) -> int:
    return connection.execute(select(func.count()).select_from(_c).where(_c.c.object_key == object_key)).scalar()


def is_dirty(row: Row) -> bool:
    """Written since its last upload and no upload under way."""
    return row.state == D.value


def is_unuploaded(row: Row) -> bool:
    return ChunkState(row.state) in UNUPLOADED


def is_fetchable(row: Row) -> bool:
    """Evicted and nobody is fetching it yet."""
    return row.state == R.value


def is_local(row: Row) -> bool:
    return ChunkState(row.state) in LOCAL


def needs_fetch(row: Row) -> bool:
    return ChunkState(row.state) in NEEDS_FETCH


def is_evictable(row: Row) -> bool:
    return ChunkState(row.state) in EVICTABLE
