"""The worker's scrub thread: repairs quarantined copies as soon as it hears
of them (a fault-in found one), and reads every stored copy back at
``scrubRate`` bytes per second (0: no background reading).

A thread rather than an APScheduler job, as the metadata backup is: it waits
on a wake-up (a bad copy found) and paces itself by the bytes it reads. Its
place in the pass is kept in the state (``scrub_cursor``), so a restart
resumes it instead of starting over.
"""

from __future__ import annotations

import json
import logging
import threading

from zero.meta.scrub import Scrubber
from zero.remote.pool import BandwidthLimit
from zero.state import counters, db as state_db, quarantine
from zero.worker.context import WorkerContext

log = logging.getLogger(__name__)

CURSOR_META = "scrub_cursor"  # [key, remote] of the last copy checked in this pass
BATCH = 64                    # copies checked between two saves of the cursor
PASS_PAUSE_S = 10.0           # between passes, so a small store is not read in a tight loop
IDLE_RECHECK_S = 60.0         # with scrubRate 0: how often repairs are looked at without a wake-up


class ScrubThread:
    def __init__(self, context: WorkerContext, still_ours=lambda names: set(names)):
        self.context = context
        self.scrubber = Scrubber(context, still_ours, before_read=self._pace)
        self._woken = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._limit: BandwidthLimit | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="zero-scrub", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._woken.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def copies_read(self, key: str, verdicts: dict) -> None:
        """A fault-in's findings (Fetcher.copies_read): quarantine now, repair soon."""
        self.scrubber.judge(key, verdicts)
        self._woken.set()

    def _pace(self, size: int) -> None:
        rate = self.context.config.scrub_rate_bytes_per_s  # zero reload may change it
        if self._limit is None or self._limit.bytes_per_s != rate:
            self._limit = BandwidthLimit(rate, sleep=self._stopping.wait)
        self._limit.take(size)

    def _run(self) -> None:
        while not self._stopping.is_set():
            pause = IDLE_RECHECK_S
            try:
                if self.scrubber.repair_due():
                    self.scrubber.repair_all()
                if self.context.config.scrub_rate_bytes_per_s > 0:
                    pause = 0.0 if self._step() else PASS_PAUSE_S
            except Exception:
                log.exception("The scrub failed; trying again in %.0fs", IDLE_RECHECK_S)
            if pause:
                self._woken.wait(pause)
            self._woken.clear()

    def _step(self) -> bool:
        """Check the next batch of copies; False when the pass is over (the next starts from the beginning)."""
        with self.context.database.read() as connection:
            saved = state_db.get_meta(connection, CURSOR_META)
            cursor = tuple(json.loads(saved)) if saved else None
            batch = quarantine.copies_after(connection, cursor, BATCH)
        checked = bad = 0
        for row in batch:
            if self._stopping.is_set() or self.context.config.scrub_rate_bytes_per_s <= 0:
                break
            verdict = self.scrubber.check(row.key, row.remote, row.stored_bytes)
            bad += verdict is False
            checked += 1
            cursor = (row.key, row.remote)
        with self.context.database.write() as connection:
            state_db.set_meta(connection, CURSOR_META, json.dumps(cursor) if batch else "")
            counters.bump(connection, "scrubbed_copies", checked)
        if bad:
            self._woken.set()  # repair at once
        return bool(batch)
