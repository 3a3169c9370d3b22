"""Copies of remote objects found corrupt (or missing) by a fault-in or a scrub.

A quarantined copy keeps its placement row (the bytes are still there, and the
collector must still delete them) but never counts: not as a durable copy for
eviction, not as a dedup target, and it is read only after every other copy.
Storing the object on that remote again (a repair, or an upload of the same
bytes) lifts the quarantine in the same transaction that records the copy.
Written by the worker and `zero scrub`.
"""

from __future__ import annotations

import time

from sqlalchemy import Connection, Row, delete, exists, func, insert, select, tuple_

from zero.state import schema
from zero.state.chunkstate import LOCAL

_q = schema.quarantine
_p = schema.placements
_c = schema.chunks
_o = schema.objects


def record(connection: Connection, key: str, remote: str, reason: str, now: float | None = None) -> bool:
    """Quarantine the copy of ``key`` on ``remote``; True if it was not already.
    A copy with no placement row (collected meanwhile) is not recorded."""
    held = connection.execute(select(_p.c.key).where(_p.c.key == key, _p.c.remote == remote)).first()
    if held is None or is_quarantined(connection, key, remote):
        return False
    connection.execute(insert(_q).values(key=key, remote=remote, found_at=time.time() if now is None else now,
                                         reason=reason))
    return True


def lift(connection: Connection, key: str, remote: str) -> None:
    """The copy on ``remote`` is good again (stored anew, or it verified)."""
    lift_many(connection, [(key, remote)])


def lift_many(connection: Connection, copies) -> None:
    """lift() for each (key, remote); one statement for an upload group."""
    connection.exec_driver_sql("DELETE FROM quarantine WHERE key = ? AND remote = ?", list(copies))


def forget_object(connection: Connection, key: str) -> None:
    connection.execute(delete(_q).where(_q.c.key == key))


def is_quarantined(connection: Connection, key: str, remote: str) -> bool:
    return connection.execute(select(_q.c.key).where(_q.c.key == key, _q.c.remote == remote)).first() is not None


def bad_remotes(connection: Connection, key: str) -> set[str]:
    return {remote for (remote,) in connection.exec_driver_sql("SELECT remote FROM quarantine WHERE key = ?",
                                                               (key,))}


# good_copy_of in plain SQL, for a placements row named ``p``.
GOOD_COPY_SQL = "NOT EXISTS (SELECT 1 FROM quarantine AS q WHERE q.key = p.key AND q.remote = p.remote)"


def good_copy_of(key_column) -> object:
    """SQL condition on a placements row: its copy is not quarantined (for the durable-copy counts)."""
    return ~exists().where(_q.c.key == key_column, _q.c.remote == _p.c.remote)


def rows(connection: Connection, limit: int | None = None) -> list[Row]:
    query = select(_q).order_by(_q.c.found_at, _q.c.key, _q.c.remote)
    return connection.execute(query if limit is None else query.limit(limit)).all()


def count(connection: Connection) -> int:
    return connection.execute(select(func.count()).select_from(_q)).scalar()


def without_good_copy(connection: Connection) -> list[Row]:
    """Chunks (ino, idx, object_key) that nothing can be read back from: not in
    the cache, and every copy of their object quarantined. What `zero status`
    and `zero scrub` report, by file."""
    good_placement = exists().where(_p.c.key == _c.c.object_key, good_copy_of(_p.c.key))
    quarantined = exists().where(_q.c.key == _c.c.object_key)
    return connection.execute(
        select(_c.c.ino, _c.c.idx, _c.c.object_key)
        .where(_c.c.state.not_in([s.value for s in LOCAL]), quarantined, ~good_placement)
        .order_by(_c.c.ino, _c.c.idx)).all()


def local_chunks_of(connection: Connection, key: str) -> list[Row]:
    """Chunks in the cache whose last upload was ``key``: a source for a repair
    (the caller checks the file still hashes to the key)."""
    return connection.execute(select(_c.c.ino, _c.c.idx).where(
        _c.c.object_key == key, _c.c.state.in_([s.value for s in LOCAL]))).all()


def copies_after(connection: Connection, cursor: tuple[str, str] | None, limit: int) -> list[Row]:
    """Placements (key, remote, stored_bytes) in key order after ``cursor``: one scrub step."""
    query = select(_p.c.key, _p.c.remote, _o.c.stored_bytes).join(_o, _o.c.key == _p.c.key)
    if cursor is not None:
        query = query.where(tuple_(_p.c.key, _p.c.remote) > tuple_(*cursor))
    return connection.execute(query.order_by(_p.c.key, _p.c.remote).limit(limit)).all()


def copies_total(connection: Connection) -> tuple[int, int]:
    """(copies, stored bytes) a full scrub reads."""
    row = connection.execute(select(func.count(), func.coalesce(func.sum(_o.c.stored_bytes), 0))
                             .select_from(_p).join(_o, _o.c.key == _p.c.key)).first()
    return row[0], row[1]
