"""What the worker knows of each configured remote: the id in its marker,
its health, and whether it is being drained. Written by the worker (and
`zero drain`); read by `zero status`."""

from __future__ import annotations

import time

from sqlalchemy import Connection, Row, insert, select, update

from zero.state import schema

HEALTHY = "healthy"
UNHEALTHY = "unhealthy"      # failing now; retried on a schedule
UNAVAILABLE = "unavailable"  # its marker is missing or names another filesystem: never written into

_r = schema.remotes


def get(connection: Connection, name: str) -> Row | None:
    return connection.execute(select(_r).where(_r.c.name == name)).first()


def all_rows(connection: Connection) -> list[Row]:
    return connection.execute(select(_r).order_by(_r.c.name)).all()


def record_identity(connection: Connection, name: str, remote_id: str) -> None:
    """The remote's marker was written or adopted: remember its id."""
    if get(connection, name) is None:
        connection.execute(insert(_r).values(name=name, remote_id=remote_id, health=HEALTHY, since=time.time(),
                                             last_error=None, draining=False))
    else:
        connection.execute(update(_r).where(_r.c.name == name).values(remote_id=remote_id))


def set_health(connection: Connection, name: str, health: str, error: str | None) -> bool:
    """Record the remote's health; True if it changed."""
    row = get(connection, name)
    if row is None:
        connection.execute(insert(_r).values(name=name, remote_id=None, health=health, since=time.time(),
                                             last_error=error, draining=False))
        return True
    if row.health == health and row.last_error == error:
        return False
    values = {"health": health, "last_error": error}
    if row.health != health:
        values["since"] = time.time()
    connection.execute(update(_r).where(_r.c.name == name).values(**values))
    return row.health != health


def draining_names(connection: Connection) -> set[str]:
    return {row.name for row in connection.execute(select(_r.c.name).where(_r.c.draining.is_(True)))}


def set_draining(connection: Connection, name: str, draining: bool) -> None:
    connection.execute(update(_r).where(_r.c.name == name).values(draining=draining))
