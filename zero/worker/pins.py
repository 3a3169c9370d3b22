"""Pinned trees stay local ("available offline"), and when the cache has
room, recently used chunks that were evicted come back (priming)."""

from __future__ import annotations

from zero.state import backlog, chunks, pins, requests
from zero.worker.context import WorkerContext
from zero.worker.fetcher import cache_block, fetch_cache_bytes
from zero.worker.usage import cache_usage

PRIME_BATCH = 16
PENDING_COUNTED = 1024  # fetches already queued that priming counts; with more queued it waits
PRIME_BACKLOG_LIMIT = 2000  # chunks not uploaded beyond which priming waits (measuring reads each one's file)


def apply_pins(context: WorkerContext) -> int:
    """Mark the chunks of every pinned tree, unmark the rest, and ask for
    pinned chunks that are remote. Returns how many fetches were queued."""
    with context.database.write() as connection:
        pins.apply(connection)
        wanted = pins.remote_pinned(connection, limit=10_000)
        for row in wanted:
            requests.request_fetch(connection, row.ino, row.idx, requests.PIN)
    return len(wanted)


def prime(context: WorkerContext, usage_bytes: int | None = None) -> int:
    """Queue recently used evicted chunks while the cache stays under the low watermark.

    ``usage_bytes`` is the cache's usage when the caller knows it; otherwise it
    is measured inside the write transaction, where no fetch or eviction can
    commit, so it agrees with the fetches still pending."""
    low_watermark = int(context.config.target_disk_usage_bytes * context.config.low_watermark)
    queued = 0
    with context.database.read() as connection:
        if not chunks.recently_evicted(connection, 1):
            return 0  # the usual case: nothing to bring back, so no write transaction
    block = cache_block(context.cache.root)
    with context.database.write() as connection:
        if usage_bytes is None and backlog.dirty_totals(connection)[0] > PRIME_BACKLOG_LIMIT:
            return 0  # writes are piling up: no time to bring old data back, nor to look at every new file
        usage = cache_usage(connection, context.cache) if usage_bytes is None else usage_bytes
        room = low_watermark - usage
        if room < block:
            return 0
        # Fetches asked for but not done yet (an earlier round's, readers', prefetch's) will take room
        # too; without counting them every round queued the same room again and priming overshot
        # the low watermark, bringing back chunks the evictor then had to throw out again. Each
        # counts what its object takes (decision 82), so a small file is not a whole chunk.
        pending = requests.pending_fetches(connection, PENDING_COUNTED)
        if len(pending) == PENDING_COUNTED:
            return 0
        room -= sum(fetch_cache_bytes(row.plain_bytes, context.chunk_size, block) for row in pending)
        for row in chunks.recently_evicted(connection, PRIME_BATCH):
            size = fetch_cache_bytes(row.plain_bytes, context.chunk_size, block)
            if size > room:
                break  # most recently used first: no skipping ahead to a smaller one
            if requests.fetch_error(connection, row.ino, row.idx) is not None:
                continue  # its object is corrupt or missing: re-asking would fetch and log it every round
            requests.request_fetch(connection, row.ino, row.idx, requests.PRIME)
            room -= size
            queued += 1
    return queued
