"""Keep the cache under targetDiskUsage: evict clean chunks, least recently
used first (chunks fetched for a reader and not read yet last), down to the low watermark. Dirty, uploading, leased and pinned
chunks are never evicted; one transaction checks "still clean, not leased",
unlinks the file and marks the chunk remote. Only chunks whose object has
``replicas`` copies on configured, healthy remotes go (invariant 2).
"""

from __future__ import annotations

import logging
import os
import threading
import time

from zero.errors import StateConflict
from zero.state import chunks, counters, objects
from zero import crashpoints
from zero.worker.context import WorkerContext
from zero.worker.usage import cache_usage

log = logging.getLogger(__name__)

BATCH = 256
MEASURE_EVERY_S = 1.0  # make_room trusts its running estimate this long before measuring the cache again,
MEASURE_SHARE_INVERSE = 10  # or ten times as long as the last measure took, if that is longer


class Evictor:
    def __init__(self, context: WorkerContext):
        self.context = context
        self.last_usage = 0
        self._room_estimate = 0
        self._room_measured_at = float("-inf")
        self._measure_took_s = 0.0
        self._room_measured_ns = 0  # when that measure began, on the clock chunk files' mtimes use
        # The keeper, the fetch dispatcher and upload groups all evict: one at a time,
        # so two never evict from the same estimate (twice what was needed).
        self._lock = threading.RLock()

    @property
    def target(self) -> int:
        return self.context.config.target_disk_usage_bytes

    @property
    def low_watermark(self) -> int:
        return int(self.target * self.context.config.low_watermark)

    def measure(self) -> int:
        with self.context.database.read() as connection:
            self.last_usage = cache_usage(connection, self.context.cache)
        return self.last_usage

    def over_target(self) -> bool:
        return self.measure() > self.target

    def make_room(self, incoming_bytes: int, in_flight_bytes: int = 0) -> None:
        """Before fault-ins: evict so that ``incoming_bytes`` more still fit under
        the target, counting ``in_flight_bytes`` of fault-ins started earlier that
        may not have landed yet.

        Measuring the cache (zero.worker.usage) costs a query and a look at each
        chunk not uploaded, and a sequential reader faults in dozens of chunks a
        second, so between measures the fetcher's own estimate is used: the last
        measure, plus what was in flight then, plus what it started since (an
        upper bound; fuse's writes are dirty data, which the keeper's measures
        account for). Evicting from that upper bound frees at most a chunk or two
        more than needed; walking the cache before every eviction took a tenth of
        the worker's time in a cold read, with the cache always at its target."""
        with self._lock:
            self._measure_if_stale(in_flight_bytes)
            self._reserve(incoming_bytes)

    def make_room_for_clean(self, files: list[tuple[int, int]]) -> None:
        """Before an upload turns dirty chunk files clean (``files``: each one's
        disk bytes and st_mtime_ns): evict what keeps the cache under its target
        once they count (invariant 4), down to the low watermark as the keeper does.

        A file the estimate's measure saw is in the estimate already. One written
        since (or in the same clock tick as the measure began) is counted on top,
        and stays counted until the next measure: groups finishing within one second
        each saw the same estimate, and together pushed the cache a few chunks
        over its target (tests/system/test_worker.py). Counting every file on top
        evicted a group's worth too much each time, which priming fetched back
        while a big write went on: a third of a 12 MiB write in an 8 MiB cache was
        fetched again (decision 103)."""
        with self._lock:
            self._measure_if_stale()
            self._reserve(sum(stored for stored, written_ns in files if written_ns >= self._room_measured_ns))

    def _measure_if_stale(self, in_flight_bytes: int = 0) -> None:
        """Start the estimate afresh from a measure if the last one is over MEASURE_EVERY_S old
        (longer with a state so large that measuring it takes over a tenth of that)."""
        now = time.monotonic()
        if now - self._room_measured_at > max(MEASURE_EVERY_S, MEASURE_SHARE_INVERSE * self._measure_took_s):
            self._room_measured_ns = self.context.cache.file_clock_ns()
            self._room_estimate = self.measure() + in_flight_bytes
            self._room_measured_at = time.monotonic()
            self._measure_took_s = self._room_measured_at - now

    def _reserve(self, incoming_bytes: int) -> None:
        """Evict from the estimate so that ``incoming_bytes`` more fit under the
        target (down to the low watermark), then count them in it."""
        if self._room_estimate + incoming_bytes > self.target:
            self.evict(max(0, min(self.low_watermark, self.target - incoming_bytes)), usage=self._room_estimate)
        self._room_estimate += incoming_bytes

    def evict(self, goal_bytes: int | None = None, usage: int | None = None) -> int:
        """Evict until usage (measured, unless the caller just did) is at or
        under ``goal_bytes`` (the low watermark); returns how many chunks went."""
        with self._lock:
            return self._evict(goal_bytes, usage)

    def _evict(self, goal_bytes: int | None, usage: int | None) -> int:
        goal = self.low_watermark if goal_bytes is None else goal_bytes
        if usage is None:
            usage = self.measure()
        evicted = freed_bytes = 0
        while usage > goal:
            durable_on = self.context.pool.durable_names()
            with self.context.database.read() as connection:
                candidates = chunks.eviction_candidates(connection, BATCH, durable_on, self.context.config.replicas)
            candidates = self.context.unread.read_ones_first(candidates)
            if not candidates:
                break
            for row in candidates:
                if usage <= goal:
                    break
                freed = self._evict_one(row.ino, row.idx)
                if freed is not None:
                    usage -= freed
                    freed_bytes += freed
                    evicted += 1
        self.last_usage = usage
        # The keeper's evictions too: an estimate left at what it was before them made the next
        # fault-ins evict again what priming had just brought back (decision 103).
        self._room_estimate = max(0, self._room_estimate - freed_bytes)
        if evicted:
            log.debug("Evicted %d chunk(s); cache now uses %d MiB of %d MiB", evicted, usage >> 20,
                      self.target >> 20)
        return evicted

    def _evict_one(self, ino: int, idx: int) -> int | None:
        path = self.context.cache.chunk_path(ino, idx)
        durable_on = self.context.pool.durable_names()
        try:
            with self.context.database.write() as connection:
                row = chunks.get(connection, ino, idx)
                if row is None or objects.holders_among(connection, row.object_key, durable_on) \
                        < self.context.config.replicas:
                    return None  # a remote holding it turned unhealthy or unavailable since we looked
                chunks.mark_evicted(connection, ino, idx)
                # What the measure counted for it (decision 111), not what a stat says now: a sparse
                # chunk counted at its size freed a few blocks by a stat, and more went than needed.
                freed = row.stored_bytes
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                crashpoints.crash("evict.unlinked")
                counters.bump(connection, "evictions")
        except StateConflict:
            return None  # written, leased or pinned since we looked
        return freed
