"""Chunks a restore brought back from a metadata backup: how they enter the
state machine, which of them held nothing, and which were lost with the
machine that wrote them (decision 110). Their later moves are chunks.py's.
"""

from __future__ import annotations

from typing import Iterable

from sqlalchemy import Connection, func, select

from zero.state import schema
from zero.state.chunkstate import NEEDS_FETCH, RESTORED

_c = schema.chunks


def insert_chunks(connection: Connection, rows: Iterable[tuple[int, int, str | None]]) -> int:
    """`zero restore`: chunks (ino, idx, object_key) read back from a metadata
    backup enter the state machine as RESTORED (only in a remote), to be
    faulted in on first read. Replaces a row a later journal segment rewrote.
    One backed up before its upload names no object: lost (never_uploaded)."""
    params = [(ino, idx, RESTORED.value, object_key) for ino, idx, object_key in rows]
    connection.exec_driver_sql(
        "INSERT OR REPLACE INTO chunks (ino, idx, state, version, leased, object_key, stored_bytes, last_access, "
        "pinned) VALUES (?, ?, ?, 0, 0, ?, 0, 0, 0)", params)
    return len(params)


def drop_unwritten(connection: Connection, chunk_size: int) -> int:
    """A restored chunk that names no object and starts at or past its file's end held
    nothing: a lease taken in the create, whose file the backup saw appear after the
    inode it read (a review). Not lost; a hole, as zero-fuse drops it at release."""
    return connection.exec_driver_sql(
        "DELETE FROM chunks WHERE object_key IS NULL AND idx * ? >= "
        "coalesce((SELECT size FROM inodes WHERE inodes.ino = chunks.ino), 0)", (chunk_size,)).rowcount


def never_uploaded(connection: Connection) -> tuple[int, int]:
    """(chunks, files) that a restore brought back naming no object: written on the
    lost machine after their last upload and before its last metadata backup."""
    row = connection.execute(select(func.count(), func.count(func.distinct(_c.c.ino))).where(
        _c.c.state.in_([s.value for s in NEEDS_FETCH]), _c.c.object_key.is_(None))).first()
    return row[0], row[1]
