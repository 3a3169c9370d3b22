"""What zero-fuse answered, per FUSE operation: counts, errors, time and a
latency histogram. fuse adds what it counted in memory about once a second;
the worker's metrics endpoint and `zero status` read the totals."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy import Connection, select
from sqlalchemy.dialects.sqlite import insert

from zero.state import schema

_o = schema.fuse_ops
_l = schema.fuse_op_latency

# From a cached getattr (tens of µs) to a read that waits for a fault-in (seconds).
LATENCY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                     1.0, 2.5, 5.0, 10.0)


@dataclass
class OpTotals:
    calls: int = 0
    errors: int = 0
    seconds: float = 0.0
    observations: dict[float, int] = field(default_factory=dict)  # bucket bound -> operations in that bucket


def add(connection: Connection, counted: Mapping[str, OpTotals]) -> None:
    """Add counts made since the last call to the totals."""
    for op, totals in counted.items():
        statement = insert(_o).values(op=op, calls=totals.calls, errors=totals.errors, seconds=totals.seconds)
        connection.execute(statement.on_conflict_do_update(index_elements=[_o.c.op], set_={
            "calls": _o.c.calls + statement.excluded.calls, "errors": _o.c.errors + statement.excluded.errors,
            "seconds": _o.c.seconds + statement.excluded.seconds}))
        for le, count in totals.observations.items():
            statement = insert(_l).values(op=op, le=le, observations=count)
            connection.execute(statement.on_conflict_do_update(index_elements=[_l.c.op, _l.c.le], set_={
                "observations": _l.c.observations + statement.excluded.observations}))


def read_all(connection: Connection) -> dict[str, OpTotals]:
    found = {row.op: OpTotals(row.calls, row.errors, row.seconds) for row in connection.execute(select(_o))}
    for row in connection.execute(select(_l)):
        if row.op in found:
            found[row.op].observations[row.le] = row.observations
    return found
