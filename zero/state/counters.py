"""Running totals for `zero status` (uploads, evictions, fault-ins, ...)."""

from __future__ import annotations

from sqlalchemy import Connection, select

from zero.state import schema

_t = schema.counters


def bump(connection: Connection, name: str, amount: int = 1) -> None:
    bump_many(connection, {name: amount})


def bump_many(connection: Connection, amounts: dict[str, int]) -> None:
    """Add to several totals in one statement (an upload group's, say); zeros are skipped."""
    amounts = [(name, amount) for name, amount in amounts.items() if amount]
    if amounts:
        connection.exec_driver_sql(
            "INSERT INTO counters (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value", amounts)


def read_all(connection: Connection) -> dict[str, int]:
    return {row.name: row.value for row in connection.execute(select(_t))}
