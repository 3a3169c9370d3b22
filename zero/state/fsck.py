"""What `zero fsck` reads of the state in bulk, and the few repairs that
no other module of ``zero.state`` already offers.

Reads return plain tuples so a check can hold a large namespace in memory
once instead of asking row by row.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterator, NamedTuple

from sqlalchemy import Connection, delete, func, select

from zero.state import schema

_i = schema.inodes
_d = schema.dentries
_o = schema.objects
_p = schema.placements

# Tables keyed by an inode that only make sense while the inode exists.
_PER_INODE = (schema.chunks, schema.xattrs, schema.fetch_requests, schema.upload_requests, schema.pins)


class InodeRow(NamedTuple):
    ino: int
    mode: int
    nlink: int
    size: int


class Entry(NamedTuple):
    parent: int
    name: bytes
    ino: int


def inode_count(connection: Connection) -> int:
    return connection.execute(select(func.count()).select_from(_i)).scalar()


def inode_rows(connection: Connection) -> Iterator[InodeRow]:
    for row in connection.execute(select(_i.c.ino, _i.c.mode, _i.c.nlink, _i.c.size)):
        yield InodeRow(*row)


def entries(connection: Connection) -> Iterator[Entry]:
    for row in connection.execute(select(_d.c.parent, _d.c.name, _d.c.ino)):
        yield Entry(*row)


def object_sizes(connection: Connection) -> dict[str, int]:
    """Every object the state knows -> its plaintext size (a clean chunk file's size)."""
    return {row.key: row.plain_bytes for row in connection.execute(select(_o.c.key, _o.c.plain_bytes))}


def placements(connection: Connection) -> dict[str, set[str]]:
    """Object key -> the remotes the state says hold a copy."""
    found: dict[str, set[str]] = defaultdict(set)
    for row in connection.execute(select(_p.c.key, _p.c.remote)):
        found[row.key].add(row.remote)
    return dict(found)


def rows_of_missing_inodes(connection: Connection) -> dict[str, list[int]]:
    """Table name -> inodes it has rows for that no longer exist."""
    found = {}
    for table in _PER_INODE:
        inos = [row[0] for row in connection.execute(
            select(table.c.ino).distinct().where(~table.c.ino.in_(select(_i.c.ino))))]
        if inos:
            found[table.name] = inos
    return found


def delete_rows_of(connection: Connection, table_name: str, ino: int) -> None:
    table = schema.metadata.tables[table_name]
    connection.execute(delete(table).where(table.c.ino == ino))
