"""Pins: files and trees kept in the cache (`zero pin`). Written by the CLI;
the worker applies them to chunks.pinned."""

from __future__ import annotations

import time
from typing import Iterable

from sqlalchemy import Connection, Row, delete, insert, select, update

from zero.state import chunks, namespace, schema
from zero.state.chunkstate import ChunkState

_p = schema.pins
_c = schema.chunks


def add(connection: Connection, inos) -> list[int]:
    """Pin ``inos``; returns those that were not pinned before."""
    added = []
    for ino in inos:
        if connection.execute(select(_p.c.ino).where(_p.c.ino == ino)).first() is None:
            connection.execute(insert(_p).values(ino=ino, pinned_at=time.time()))
            added.append(ino)
    return added


def remove(connection: Connection, inos) -> list[int]:
    """Unpin ``inos``; returns those that were pinned."""
    inos = list(inos)
    pinned = [row.ino for row in connection.execute(select(_p.c.ino).where(_p.c.ino.in_(inos)))]
    connection.execute(delete(_p).where(_p.c.ino.in_(inos)))
    return pinned


def roots(connection: Connection) -> list[int]:
    return [row.ino for row in connection.execute(select(_p.c.ino).order_by(_p.c.pinned_at))]


def tree_bytes(connection: Connection, ino: int) -> tuple[int, int]:
    """(logical bytes, bytes in the cache) of a pinned tree."""
    logical = local = 0
    for child in namespace.descendants(connection, ino):
        inode = namespace.get_inode(connection, child)
        if inode is not None:
            logical += inode.size or 0
        local += sum(row.stored_bytes for row in chunks.all_rows_of(connection, child) if chunks.is_local(row))
    return logical, local


def apply(connection: Connection) -> set[int]:
    """Mark the chunks of every pinned tree pinned and unmark the rest; returns the pinned inodes."""
    pinned: set[int] = set()
    for ino in roots(connection):
        pinned.update(namespace.descendants(connection, ino))
    unpin_all_chunks(connection)
    set_pinned(connection, pinned, True)
    return pinned


# chunks.pinned: written only here (the evictor and the fetcher read it)

def set_pinned(connection: Connection, inos: Iterable[int], pinned: bool) -> int:
    inos = list(inos)
    total = 0
    for start in range(0, len(inos), 500):
        total += connection.execute(update(_c).where(_c.c.ino.in_(inos[start:start + 500]))
                                    .values(pinned=pinned)).rowcount
    return total


def unpin_all_chunks(connection: Connection) -> int:
    return connection.execute(update(_c).where(_c.c.pinned.is_(True)).values(pinned=False)).rowcount


def remote_pinned(connection: Connection, limit: int) -> list[Row]:
    """Pinned chunks that are in the remotes only: what pinning fetches (not one
    that names no object: never uploaded, nothing can bring it back)."""
    return connection.execute(select(_c).where(_c.c.pinned.is_(True), _c.c.state == ChunkState.REMOTE.value,
                                               _c.c.object_key.isnot(None))
                              .limit(limit)).all()
