"""Chunks fetched for a reader that no read has touched yet: the evictor
takes them last.

A sequential reader's read-ahead brings chunks in before it reads them, and
each read it makes afterwards stamps the chunk it read later than the ones
fetched ahead. Least recently used alone then evicts what was fetched ahead
first, before the reader gets there, and the worker fetches it again: a cold
read of 1 GiB through a 32 MiB cache made 284-297 fault-ins for 256 chunks.

A fetch remembers the ``last_access`` it stamped; while the row still holds
that stamp, no read has been recorded since. Kept for a reader only for
``KEPT_FOR_A_READER_S``: an abandoned read-ahead is then an old chunk like
any other. Never a reason to miss the target (invariant 4): when nothing
else is left, unread chunks go too, oldest first.
"""

from __future__ import annotations

import threading
import time
from typing import Sequence

KEPT_FOR_A_READER_S = 60.0  # far longer than a reader takes to reach its read-ahead


class UnreadFetches:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (ino, idx) -> (the last_access its fetch stamped, monotonic time it landed), oldest first
        self._fetched: dict[tuple[int, int], tuple[float, float]] = {}

    def fetched(self, ino: int, idx: int, stamped_access: float) -> None:
        with self._lock:
            self._fetched.pop((ino, idx), None)  # to the end: the order stays the order of landing
            self._fetched[(ino, idx)] = (stamped_access, time.monotonic())
            self._forget_old()

    def read_ones_first(self, rows: Sequence) -> list:
        """Eviction candidates (rows with ino, idx, last_access), least recently
        used first: those still unread since a fetch brought them in move last,
        each group in its own order."""
        with self._lock:
            self._forget_old()
            unread = [self._fetched.get((row.ino, row.idx), (None,))[0] == row.last_access for row in rows]
        return [row for row, waits in zip(rows, unread) if not waits] + \
               [row for row, waits in zip(rows, unread) if waits]

    def _forget_old(self) -> None:
        oldest = time.monotonic() - KEPT_FOR_A_READER_S
        while self._fetched:
            key, (_stamp, landed) = next(iter(self._fetched.items()))
            if landed >= oldest:
                return
            del self._fetched[key]
