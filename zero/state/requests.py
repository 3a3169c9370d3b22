"""The queues zero-fuse fills and zero-worker drains: fault-ins and uploads."""

from __future__ import annotations

import time

from sqlalchemy import Connection, Row, delete, insert, select, update

from zero.state import schema
from zero.state.chunks import state_in
from zero.state.chunkstate import UNUPLOADED

_f = schema.fetch_requests
_u = schema.upload_requests

READER = 0     # a read is waiting on it
PREFETCH = 1   # sequential read ahead
PIN = 2        # zero pin wants it local
WARMUP = 2     # zero warmup wants it local (as a pin does, once)
PRIME = 3      # the cache has room: bring back what was used recently


def request_fetch(connection: Connection, ino: int, idx: int, priority: int) -> None:
    """Ask for (ino, idx); a request already there keeps its place unless this one
    is more urgent or it failed (then it is asked afresh). One plain statement:
    a sequential reader asks for every chunk it reads ahead."""
    connection.exec_driver_sql(
        "INSERT INTO fetch_requests (ino, idx, priority, requested_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (ino, idx) DO UPDATE SET priority = min(priority, excluded.priority), error = NULL,"
        " requested_at = excluded.requested_at"
        " WHERE fetch_requests.priority > excluded.priority OR fetch_requests.error IS NOT NULL",
        (ino, idx, priority, time.time()))


def priority_of(connection: Connection, ino: int, idx: int) -> int | None:
    """The best priority anyone asked a fetch of (ino, idx) with; None if nobody asks."""
    return connection.exec_driver_sql("SELECT priority FROM fetch_requests WHERE ino = ? AND idx = ?",
                                      (ino, idx)).scalar()


def fetch_error(connection: Connection, ino: int, idx: int) -> str | None:
    return connection.exec_driver_sql("SELECT error FROM fetch_requests WHERE ino = ? AND idx = ?",
                                      (ino, idx)).scalar()


def pending_fetches(connection: Connection, limit: int) -> list[Row]:
    """Requests not failed, best priority first, each with the ``plain_bytes``
    its fetch brings into the cache (NULL when the chunk names no object)."""
    # Plain SQL: the fetch dispatcher asks each time a fetch ends or a request arrives.
    # The few rows first, then the join: joined before the LIMIT, a queue of 100,000
    # (zero warmup, pins) cost 165 ms a look instead of 8.
    return connection.exec_driver_sql(
        "SELECT f.*, o.plain_bytes FROM (SELECT * FROM fetch_requests WHERE error IS NULL"
        " ORDER BY priority, requested_at LIMIT ?) AS f"
        " LEFT JOIN chunks AS c ON c.ino = f.ino AND c.idx = f.idx"
        " LEFT JOIN objects AS o ON o.key = c.object_key"
        " ORDER BY f.priority, f.requested_at", (limit,)).all()


def fail_fetch(connection: Connection, ino: int, idx: int, error: str) -> None:
    connection.execute(update(_f).where(_f.c.ino == ino, _f.c.idx == idx).values(error=error))


def done_fetch(connection: Connection, ino: int, idx: int) -> None:
    connection.exec_driver_sql("DELETE FROM fetch_requests WHERE ino = ? AND idx = ?", (ino, idx))


def request_upload(connection: Connection, ino: int) -> None:
    if connection.execute(select(_u.c.ino).where(_u.c.ino == ino)).first() is None:
        connection.execute(insert(_u).values(ino=ino, requested_at=time.time()))


def pending_uploads(connection: Connection) -> list[int]:
    return [row.ino for row in connection.execute(select(_u.c.ino).order_by(_u.c.requested_at))]


# A request is done once its inode has nothing left to upload that fuse let go of.
_UNUPLOADED_IN, _UNUPLOADED = state_in(UNUPLOADED, column="c.state")
_DONE = ("NOT EXISTS (SELECT 1 FROM chunks AS c WHERE c.ino = upload_requests.ino"
         f" AND {_UNUPLOADED_IN} AND c.leased = 0)")


def any_upload_done(connection: Connection) -> bool:
    """Whether finish_done_uploads() has something to do (read first, so that
    the uploader's every wake-up takes no write transaction for nothing)."""
    return connection.exec_driver_sql(f"SELECT 1 FROM upload_requests WHERE {_DONE} LIMIT 1",
                                      _UNUPLOADED).first() is not None


def finish_done_uploads(connection: Connection) -> int:
    """Delete the upload requests that are done, in one statement (a request
    at a time was quadratic in a `zero sync` of many small files: measured)."""
    return connection.exec_driver_sql(f"DELETE FROM upload_requests WHERE {_DONE}", _UNUPLOADED).rowcount


def done_upload(connection: Connection, ino: int) -> None:
    connection.execute(delete(_u).where(_u.c.ino == ino))
