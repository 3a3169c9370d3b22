"""Pinned trees stay local ("available offline"), and when the cache has
room, recently used chunks that were evicted come back (priming)."""

from __future__ import annotations

from zero.state import chunks, namespace, requests
from zero.state import schema
from zero.worker.context import WorkerContext

from sqlalchemy import select

PRIME_BATCH = 16


def apply_pins(context: WorkerContext) -> int:
    """Mark the chunks of every pinned tree, unmark the rest, and ask for
    pinned chunks that are remote. Returns how many fetches were queued."""
    with context.database.write() as connection:
        pinned_roots = [row.ino for row in connection.execute(select(schema.pins.c.ino))]
        pinned: set[int] = set()
        for ino in pinned_roots:
            pinned.update(namespace.descendants(connection, ino))
        connection.execute(schema.chunks.update().where(schema.chunks.c.pinned.is_(True))
                           .values(pinned=False))
        chunks.set_pinned(connection, pinned, True)
        wanted = chunks.remote_pinned(connection, limit=10_000)
        for row in wanted:
            requests.request_fetch(connection, row.ino, row.idx, requests.PIN)
    return len(wanted)


def prime(context: WorkerContext, usage_bytes: int) -> int:
    """Queue recently used evicted chunks while the cache stays under the low watermark."""
    room = int(context.config.target_disk_usage_bytes * context.config.low_watermark) - usage_bytes
    if room <= context.chunk_size:
        return 0
    queued = 0
    with context.database.write() as connection:
        for row in chunks.recently_evicted(connection, PRIME_BATCH):
            if room <= context.chunk_size:
                break
            requests.request_fetch(connection, row.ino, row.idx, requests.PRIME)
            room -= context.chunk_size
            queued += 1
    return queued
