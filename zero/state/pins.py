"""Pins: files and trees kept in the cache (`zero pin`). Written by the CLI;
the worker applies them to chunks.pinned."""

from __future__ import annotations

import time

from sqlalchemy import Connection, delete, insert, select

from zero.state import chunks, namespace, schema

_p = schema.pins


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
    chunks.unpin_all(connection)
    chunks.set_pinned(connection, pinned, True)
    return pinned
