"""The upload backlog and what the cache holds, asked without changing anything:
which chunks' content is only in the cache (at which version, for a promise
of fsync or `zero sync` to wait on), and totals by state for the status, the
metrics and the worker's measure of its cache.

It only reads; zero.state.chunks changes chunk rows (and answers the questions
about single chunks that come with those changes).
"""

from __future__ import annotations

from sqlalchemy import Connection, func, select

from zero.state import schema
from zero.state.chunks import state_in
from zero.state.chunkstate import UNUPLOADED, ChunkState

_c = schema.chunks
SMALL_PROMISE = 64  # chunks still_unuploaded looks up one by one


def unuploaded_versions(connection: Connection, ino: int | None = None) -> dict[tuple[int, int], int]:
    """(ino, idx) -> version of every chunk (of ``ino``, or of all) whose content is only in the cache."""
    unuploaded, states = state_in(UNUPLOADED)
    if ino is None:
        rows = connection.exec_driver_sql(f"SELECT ino, idx, version FROM chunks WHERE {unuploaded}", states)
    else:
        rows = connection.exec_driver_sql(f"SELECT ino, idx, version FROM chunks WHERE ino = ? AND {unuploaded}",
                                          (ino, *states))
    return {(row_ino, idx): version for row_ino, idx, version in rows}


def still_unuploaded(connection: Connection, versions: dict[tuple[int, int], int]) -> dict[tuple[int, int], int]:
    """Which chunks of ``versions`` are still not uploaded at that version (a newer
    write, a truncate or a delete takes a chunk out of an earlier promise), with
    their versions: out of a promise stays out, so a waiter asks next time only
    about what this returned.

    Asked on every wake-up while an fsync or `zero sync` waits: a few chunks are
    looked up one by one, more are read in one statement with what is not uploaded
    now (of their inode, if they are all one file's). One lookup each took 1.7 s a
    wake-up for the 25,600 chunks of a 100 GiB file."""
    if len(versions) <= SMALL_PROMISE:
        pending = {}
        for (ino, idx), version in versions.items():
            row = connection.exec_driver_sql("SELECT state, version FROM chunks WHERE ino = ? AND idx = ?",
                                             (ino, idx)).first()
            if row is not None and row.version == version and ChunkState(row.state) in UNUPLOADED:
                pending[(ino, idx)] = version
        return pending
    inodes = {ino for ino, _idx in versions}
    now = unuploaded_versions(connection, next(iter(inodes)) if len(inodes) == 1 else None)
    return {chunk: version for chunk, version in versions.items() if now.get(chunk) == version}


def unuploaded(connection: Connection) -> list[tuple[int, int]]:
    """(ino, idx) of every chunk whose content is only in the cache."""
    return list(unuploaded_versions(connection))


def clean_bytes(connection: Connection) -> int:
    """The disk bytes clean chunks' files take, as their upload or fault-in recorded
    them: a clean chunk's file does not change (a write makes the chunk dirty first)."""
    return connection.exec_driver_sql("SELECT coalesce(sum(stored_bytes), 0) FROM chunks WHERE state = ?",
                                      (ChunkState.CLEAN.value,)).scalar()


def unuploaded_sample(connection: Connection, limit: int) -> tuple[int, list[tuple[int, int]]]:
    """How many chunks' content is only in the cache, and (ino, idx) of up to
    ``limit`` of them, all of them if they are that few, else picked at random."""
    unuploaded, states = state_in(UNUPLOADED)
    where = f"WHERE {unuploaded}"
    count = connection.exec_driver_sql(f"SELECT count(*) FROM chunks {where}", states).scalar()
    order = "" if count <= limit else " ORDER BY random()"
    rows = connection.exec_driver_sql(f"SELECT ino, idx FROM chunks {where}{order} LIMIT ?", (*states, limit))
    return count, [(ino, idx) for ino, idx in rows]


def counts_by_state(connection: Connection) -> dict[str, tuple[int, int]]:
    """state -> (chunks, bytes in the cache)."""
    rows = connection.execute(
        select(_c.c.state, func.count(), func.coalesce(func.sum(_c.c.stored_bytes), 0)).group_by(_c.c.state))
    return {row[0]: (row[1], row[2]) for row in rows}


def dirty_totals(connection: Connection) -> tuple[int, int]:
    """(dirty or uploading chunks, of which leased)."""
    row = connection.execute(select(func.count(), func.coalesce(func.sum(_c.c.leased), 0)).where(
        _c.c.state.in_([s.value for s in UNUPLOADED]))).first()
    return row[0], row[1]
