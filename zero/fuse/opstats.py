"""Counting what zero-fuse answers: per FUSE operation its calls, errors and
latency, the bytes read and written, and whether each read was served from
the cache or waited for a fault-in.

The FUSE path pays two clock reads and a lock, never a database round trip:
counts stay in memory and a thread adds them to the state about once a
second (and once more at unmount), where the worker's metrics endpoint and
`zero status` read them (decision 42: metrics come from the state).
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections import Counter

from zero.state import counters, fuseops
from zero.state.db import Database
from zero.state.fuseops import LATENCY_BUCKETS_S, OpTotals

log = logging.getLogger(__name__)

PUBLISH_INTERVAL_S = 1.0
JOIN_TIMEOUT_S = 10.0
# Names in the state's counters table.
READ_BYTES = "fuse_read_bytes"
WRITTEN_BYTES = "fuse_written_bytes"
READS_FROM_CACHE = "fuse_reads_from_cache"
READS_FAULTED_IN = "fuse_reads_faulted_in"


class OpStats:
    def __init__(self, database: Database):
        self.database = database
        self._lock = threading.Lock()
        self._ops: dict[str, OpTotals] = {}
        self._counts: Counter[str] = Counter()
        self._current = threading.local()  # what the operation this thread answers has waited for
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the FUSE path ----------------------------------------------------------------------

    def waited_for_fault_in(self) -> None:
        """The operation this thread is answering waits for the worker to fetch a chunk."""
        self._current.faulted_in = True

    def record(self, op: str, seconds: float, failed: bool, result=None) -> None:
        faulted_in = getattr(self._current, "faulted_in", False)
        if faulted_in:
            self._current.faulted_in = False
        bucket = bisect.bisect_left(LATENCY_BUCKETS_S, seconds)
        with self._lock:
            totals = self._ops.get(op)
            if totals is None:
                totals = self._ops[op] = OpTotals()
            totals.calls += 1
            totals.errors += failed
            totals.seconds += seconds
            if bucket < len(LATENCY_BUCKETS_S):  # slower than the last bound: calls minus the buckets
                le = LATENCY_BUCKETS_S[bucket]
                totals.observations[le] = totals.observations.get(le, 0) + 1
            if failed:
                return
            if op == "read":
                self._counts[READ_BYTES] += len(result)
                self._counts[READS_FAULTED_IN if faulted_in else READS_FROM_CACHE] += 1
            elif op == "write":
                self._counts[WRITTEN_BYTES] += result

    # --- publishing -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="zero-opstats", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and publish what is left (at unmount)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=JOIN_TIMEOUT_S)
        self.publish()

    def _loop(self) -> None:
        while not self._stop.wait(PUBLISH_INTERVAL_S):
            self.publish()

    def publish(self) -> None:
        """Add what was counted since the last time to the state, in one transaction."""
        with self._lock:
            ops, counts = self._ops, self._counts
            self._ops, self._counts = {}, Counter()
        if not ops and not counts:
            return
        try:
            with self.database.write() as connection:
                fuseops.add(connection, ops)
                for name, amount in counts.items():
                    counters.bump(connection, name, amount)
        except Exception as error:  # a busy or full disk: keep the counts for the next try
            log.debug("Could not store FUSE operation counts yet: %s", error)
            self._put_back(ops, counts)

    def _put_back(self, ops: dict[str, OpTotals], counts: Counter) -> None:
        with self._lock:
            for op, earlier in ops.items():
                totals = self._ops.setdefault(op, OpTotals())
                totals.calls += earlier.calls
                totals.errors += earlier.errors
                totals.seconds += earlier.seconds
                for le, count in earlier.observations.items():
                    totals.observations[le] = totals.observations.get(le, 0) + count
            self._counts.update(counts)
