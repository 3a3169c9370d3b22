"""Running totals for `zero status` (uploads, evictions, fault-ins, ...)."""

from __future__ import annotations

from sqlalchemy import Connection, insert, select, update

from zero.state import schema

_t = schema.counters


def bump(connection: Connection, name: str, amount: int = 1) -> None:
    updated = connection.execute(update(_t).where(_t.c.name == name).values(value=_t.c.value + amount))
    if updated.rowcount == 0:
        connection.execute(insert(_t).values(name=name, value=amount))


def read_all(connection: Connection) -> dict[str, int]:
    return {row.name: row.value for row in connection.execute(select(_t))}
