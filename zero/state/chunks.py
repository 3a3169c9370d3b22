"""Chunk states and the one function that changes them.

Every change of ``chunks.state`` goes through transition(): a compare-and-set
(``UPDATE … WHERE state = :from``) that names the process owning the move
and raises StateConflict when it did not apply. The table below is the whole
lifecycle; docs/dev/chunk_lifecycle.md says what is on disk after each step.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

from sqlalchemy import Connection, Row, bindparam, delete, func, insert, select, update

from zero.errors import StateConflict
from zero.state import schema
from zero.state.schema import ChunkState

FUSE = "fuse"
WORKER = "worker"

D, U, C, R, F = (ChunkState.DIRTY, ChunkState.UPLOADING, ChunkState.CLEAN, ChunkState.REMOTE,
                 ChunkState.FETCHING)

# (from, to) -> the process that owns the move.
TRANSITIONS: dict[tuple[ChunkState, ChunkState], str] = {
    (D, D): FUSE,   # take the write lease again (bumps the version)
    (C, D): FUSE,   # a write to an uploaded chunk
    (U, D): FUSE,   # a write during an upload: the upload will not be marked clean
    (D, U): WORKER,
    (U, C): WORKER,
    (U, D): WORKER,  # upload failed or was interrupted (recovery)
    (C, R): WORKER,  # eviction
    (R, F): WORKER,
    (F, C): WORKER,
    (F, R): WORKER,  # fetch failed or was interrupted (recovery)
}

_c = schema.chunks


def transition(connection: Connection, owner: str, ino: int, idx: int,
               from_states: Iterable[ChunkState], to_state: ChunkState,
               where: Iterable = (), **values) -> None:
    from_states = tuple(from_states)
    for from_state in from_states:
        allowed_owner = TRANSITIONS.get((from_state, to_state))
        if allowed_owner is None:
            raise ValueError(f"no chunk transition {from_state.value} -> {to_state.value}")
        if allowed_owner != owner and not (from_state, to_state) == (U, D):
            raise ValueError(f"{owner} may not move a chunk {from_state.value} -> {to_state.value}")
    result = connection.execute(
        update(_c)
        .where(_c.c.ino == ino, _c.c.idx == idx, _c.c.state.in_([s.value for s in from_states]), *where)
        .values(state=to_state.value, **values))
    if result.rowcount != 1:
        current = connection.execute(select(_c.c.state).where(_c.c.ino == ino, _c.c.idx == idx)).scalar()
        raise StateConflict(
            f"chunk {ino}-{idx}: expected {'/'.join(s.value for s in from_states)}, found {current or 'no chunk'}")


def get(connection: Connection, ino: int, idx: int) -> Row | None:
    return connection.execute(select(_c).where(_c.c.ino == ino, _c.c.idx == idx)).first()


# --- zero-fuse's moves -------------------------------------------------------------

def take_lease(connection: Connection, ino: int, idx: int, pinned: bool = False,
               file_exists: Callable[[], bool] = lambda: True) -> ChunkState | None:
    """Mark a chunk dirty and leased before fuse writes to it.

    Returns None when the lease is held, or the chunk's state (remote or
    fetching) when it must be faulted in first, or clean when ``file_exists``
    says its file is gone: a worker killed between unlinking the file and
    committing `remote`, whose restart must finish the eviction first (taking
    the lease would re-create the chunk empty). Plain SQL: this runs on the
    first write to every chunk (see zero.state.namespace).
    """
    row = connection.exec_driver_sql("SELECT state, version FROM chunks WHERE ino = ? AND idx = ?",
                                     (ino, idx)).first()
    if row is None:
        connection.exec_driver_sql(
            "INSERT INTO chunks (ino, idx, state, version, leased, stored_bytes, last_access, pinned) "
            "VALUES (?, ?, ?, 1, 1, 0, ?, ?)", (ino, idx, D.value, time.time(), pinned))
        return None
    state = ChunkState(row.state)
    if state in (R, F):
        return state
    if state == C and not file_exists():
        return state
    # The (C|D|U) -> D moves of TRANSITIONS, owned by fuse, as one compare-and-set.
    updated = connection.exec_driver_sql(
        "UPDATE chunks SET state = ?, leased = 1, version = ? WHERE ino = ? AND idx = ? AND state = ?",
        (D.value, row.version + 1, ino, idx, state.value)).rowcount
    if updated != 1:
        raise StateConflict(f"chunk {ino}-{idx} changed state while fuse took its lease")
    return None


def release_leases(connection: Connection, ino: int, indexes: Iterable[int]) -> None:
    """Hand chunks to the worker; last_access dates the last write, which the upload delay counts from."""
    params = [(time.time(), ino, idx) for idx in indexes]
    if params:
        connection.exec_driver_sql("UPDATE chunks SET leased = 0, last_access = ? WHERE ino = ? AND idx = ?",
                                   params)


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


def local_states(connection: Connection, ino: int) -> dict[int, ChunkState]:
    return {row.idx: ChunkState(row.state) for row in connection.execute(
        select(_c.c.idx, _c.c.state).where(_c.c.ino == ino))}


def all_rows(connection: Connection) -> list[Row]:
    return connection.execute(select(_c)).all()


def all_rows_of(connection: Connection, ino: int) -> list[Row]:
    return connection.execute(select(_c).where(_c.c.ino == ino).order_by(_c.c.idx)).all()


def dirty_chunks_of(connection: Connection, ino: int) -> list[int]:
    return [row.idx for row in connection.execute(
        select(_c.c.idx).where(_c.c.ino == ino, _c.c.state.in_([D.value, U.value])))]


def unuploaded(connection: Connection) -> list[tuple[int, int]]:
    """(ino, idx) of every chunk whose content is only in the cache."""
    return [(row.ino, row.idx) for row in connection.execute(
        select(_c.c.ino, _c.c.idx).where(_c.c.state.in_([D.value, U.value])))]


def counts_by_state(connection: Connection) -> dict[str, tuple[int, int]]:
    """state -> (chunks, bytes in the cache)."""
    rows = connection.execute(
        select(_c.c.state, func.count(), func.coalesce(func.sum(_c.c.stored_bytes), 0)).group_by(_c.c.state))
    return {row[0]: (row[1], row[2]) for row in rows}


# --- zero-worker's moves -----------------------------------------------------------

def uploadable(connection: Connection, limit: int, quiet_before: float | None = None,
               inos: Iterable[int] = ()) -> list[Row]:
    """Dirty chunks fuse has let go of, oldest first; with ``quiet_before``, only
    those untouched since then or belonging to ``inos`` (fsync, zero sync)."""
    query = select(_c).where(_c.c.state == D.value, _c.c.leased.is_(False))
    if quiet_before is not None:
        query = query.where((_c.c.last_access <= quiet_before) | _c.c.ino.in_(list(inos)))
    return connection.execute(query.order_by(_c.c.last_access).limit(limit)).all()


def dirty_totals(connection: Connection) -> tuple[int, int]:
    """(dirty or uploading chunks, of which leased)."""
    row = connection.execute(select(func.count(), func.coalesce(func.sum(_c.c.leased), 0)).where(
        _c.c.state.in_([D.value, U.value]))).first()
    return row[0], row[1]


def start_upload(connection: Connection, ino: int, idx: int, version: int) -> None:
    transition(connection, WORKER, ino, idx, [D], U, where=[_c.c.version == version, _c.c.leased.is_(False)])


def finish_upload(connection: Connection, ino: int, idx: int, version: int, object_key: str,
                  stored_bytes: int) -> None:
    transition(connection, WORKER, ino, idx, [U], C, where=[_c.c.version == version],
               object_key=object_key, stored_bytes=stored_bytes)


def abort_upload(connection: Connection, ino: int, idx: int) -> None:
    transition(connection, WORKER, ino, idx, [U], D)


def eviction_candidates(connection: Connection, limit: int) -> list[Row]:
    """Clean, unleased, unpinned chunks, least recently used first."""
    return connection.execute(
        select(_c).where(_c.c.state == C.value, _c.c.leased.is_(False), _c.c.pinned.is_(False))
        .order_by(_c.c.last_access).limit(limit)).all()


def mark_evicted(connection: Connection, ino: int, idx: int) -> None:
    transition(connection, WORKER, ino, idx, [C], R,
               where=[_c.c.leased.is_(False), _c.c.pinned.is_(False)], stored_bytes=0)


def start_fetch(connection: Connection, ino: int, idx: int) -> Row:
    transition(connection, WORKER, ino, idx, [R], F)
    return get(connection, ino, idx)


def finish_fetch(connection: Connection, ino: int, idx: int, stored_bytes: int) -> None:
    # Fetched for a reader that has not read it yet: not the next eviction victim.
    transition(connection, WORKER, ino, idx, [F], C, stored_bytes=stored_bytes, last_access=time.time())


def abort_fetch(connection: Connection, ino: int, idx: int) -> None:
    transition(connection, WORKER, ino, idx, [F], R)


def recover_interrupted(connection: Connection) -> dict[str, int]:
    """Worker start: nothing is mid-upload or mid-fetch after a restart."""
    uploading = connection.execute(update(_c).where(_c.c.state == U.value).values(state=D.value)).rowcount
    fetching = connection.execute(update(_c).where(_c.c.state == F.value).values(state=R.value)).rowcount
    return {"uploading": uploading, "fetching": fetching}


def set_stored_bytes(connection: Connection, ino: int, idx: int, stored_bytes: int) -> None:
    connection.execute(update(_c).where(_c.c.ino == ino, _c.c.idx == idx).values(stored_bytes=stored_bytes))


def set_pinned(connection: Connection, inos: Iterable[int], pinned: bool) -> int:
    inos = list(inos)
    total = 0
    for start in range(0, len(inos), 500):
        total += connection.execute(update(_c).where(_c.c.ino.in_(inos[start:start + 500]))
                                    .values(pinned=pinned)).rowcount
    return total


def remote_pinned(connection: Connection, limit: int) -> list[Row]:
    return connection.execute(select(_c).where(_c.c.pinned.is_(True), _c.c.state == R.value).limit(limit)).all()


def recently_evicted(connection: Connection, limit: int) -> list[Row]:
    """Remote chunks, most recently used first: what priming brings back."""
    return connection.execute(select(_c).where(_c.c.state == R.value)
                              .order_by(_c.c.last_access.desc()).limit(limit)).all()


def referencing(connection: Connection, object_key: str) -> int:
    return connection.execute(select(func.count()).select_from(_c).where(_c.c.object_key == object_key)).scalar()


def any_in_states(connection: Connection, ino: int, states: Iterable[ChunkState]) -> bool:
    return connection.execute(select(_c.c.idx).where(
        _c.c.ino == ino, _c.c.state.in_([s.value for s in states])).limit(1)).first() is not None

