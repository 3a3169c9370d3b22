"""The worker's loops. Four threads, each woken by zero-fuse through
watchdog or by its own deadline, never by a fixed polling tick:

- fetcher: fault-ins first (a reader is waiting), then prefetch, pins, priming;
- uploader: dirty chunks once quiet or asked for, in a small thread pool;
- keeper: eviction under targetDiskUsage, pins, priming;
- scrub (zero/worker/scrubbing.py): repairs of quarantined copies, and the
  background scrub at scrubRate.

APScheduler runs the periodic jobs: garbage collection and the heartbeat
that `zero status` reads.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time

from apscheduler.schedulers.background import BackgroundScheduler

from zero import memory, wakeup
from zero.meta.backup import BackupThread
from zero.meta.writer import FENCED, REFUSED
from zero.state import backlog, db as state_db
from zero.worker.collector import Collector
from zero.worker.context import WorkerContext
from zero.worker.evictor import Evictor
from zero.worker.fetcher import FetchDispatcher, Fetcher
from zero.worker.pins import apply_pins, prime
from zero.worker.remotes import PROBE_INTERVAL_S, RemoteKeeper
from zero.worker.scrubbing import ScrubThread
from zero.worker.uploader import Uploader

log = logging.getLogger(__name__)

RETRY_AFTER_REMOTE_ERROR_S = 5.0
IDLE_RECHECK_S = 30.0      # a lost wake-up costs at most this much delay
KEEPER_INTERVAL_S = 2.0    # eviction re-measures the cache at least this often while writes go on
HEARTBEAT_INTERVAL_S = 2.0
GC_INTERVAL_S = 600.0
KEEPER_MIN_INTERVAL_S = 0.05
KEEPER_MEASURE_SHARE_INVERSE = 10  # measuring the cache takes at most about a tenth of the keeper's time
UPLOADER_MIN_INTERVAL_S = 0.02  # idle re-checks at most this often, however many closes wake it


class Worker:
    def __init__(self, context: WorkerContext, listener: wakeup.WakeListener, keeper: RemoteKeeper):
        self.context = context
        self.listener = listener
        self.keeper = keeper
        self.evictor = Evictor(context)
        self.uploader = Uploader(context, still_ours=keeper.still_ours, on_group_done=self._group_uploaded,
                                 make_room=self._room_for_clean)
        self.scrub = ScrubThread(context, still_ours=keeper.still_ours)  # quarantine, repair, scrubRate
        self.fetcher = Fetcher(context, still_ours=keeper.still_ours, copies_read=self.scrub.copies_read)
        self.fetches = FetchDispatcher(self.fetcher, self.evictor.make_room)
        self.collector = Collector(context)
        self.meta_backup = BackupThread(context, listener)  # metadata to the remotes (zero/meta/backup.py)
        self.stopping = threading.Event()
        # The upload loop's wake-up: every wake-up of the listener, and each group that finishes
        # (those wake only it: the fetcher and the keeper have nothing to do about them).
        self._upload_wanted = threading.Event()
        self._threads: list[threading.Thread] = []
        self._scheduler = BackgroundScheduler(daemon=True)
        self._rate_window: list[tuple[float, int]] = []
        self.published: dict = {}  # more for the heartbeat: the metrics address, the settings in use

    # --- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        for name, target in (("fetcher", self._fetch_loop), ("uploader", self._upload_loop),
                             ("keeper", self._keep_loop)):
            thread = threading.Thread(target=self._guarded(name, target), name=f"zero-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._scheduler.add_job(self.heartbeat, "interval", seconds=HEARTBEAT_INTERVAL_S, id="heartbeat")
        self._scheduler.add_job(self._collect_safely, "interval", seconds=GC_INTERVAL_S, id="gc")
        self._scheduler.add_job(self._probe_remotes, "interval", seconds=PROBE_INTERVAL_S, id="remotes")
        if self.context.writer is not None:
            self._scheduler.add_job(self._keep_lease, "interval", seconds=self.context.writer.heartbeat_interval_s,
                                    id="writer-lease")
        self._scheduler.start()
        self.meta_backup.start()
        self.scrub.start()
        self.heartbeat()

    def stop(self) -> None:
        self.stopping.set()
        self.listener.poke()
        for thread in self._threads:
            thread.join(timeout=120)
        self.uploader.close()
        self.scrub.stop()
        self.meta_backup.stop()  # after the uploads: its last segment names them
        self._scheduler.shutdown(wait=False)
        self.heartbeat(stopped=True)

    def _guarded(self, name, loop):
        def run():
            while not self.stopping.is_set():
                try:
                    loop()
                    return
                except Exception:
                    log.exception("The %s loop failed; restarting it in %.0fs", name, RETRY_AFTER_REMOTE_ERROR_S)
                    self.stopping.wait(RETRY_AFTER_REMOTE_ERROR_S)
        return run

    def _wait(self, generation: int, timeout: float) -> int:
        if self.stopping.is_set():
            return generation
        return self.listener.wait(generation, timeout)

    # --- loops -------------------------------------------------------------------------

    def _fetch_loop(self) -> None:
        self.fetches.run(self.stopping, self.listener, idle_s=IDLE_RECHECK_S, retry_s=RETRY_AFTER_REMOTE_ERROR_S)

    def _upload_loop(self) -> None:
        """Keeps up to GROUPS_IN_FLIGHT groups uploading; each one's end wakes it."""
        self.listener.also_set(self._upload_wanted)
        try:
            while not self.stopping.is_set():
                self._upload_wanted.clear()  # a wake-up from here on is kept for the wait below
                if self.uploader.reap():
                    self.uploader.finish_requests()
                    self.uploader.wait_in_flight()
                    self._wait(self.listener.generation, RETRY_AFTER_REMOTE_ERROR_S)
                    continue
                if self.uploader.has_room():
                    hurry = self.evictor.last_usage > self.context.config.target_disk_usage_bytes
                    if self.uploader.submit(self.uploader.next_rows(hurry=hurry)):
                        continue
                self.uploader.finish_requests()
                self.stopping.wait(UPLOADER_MIN_INTERVAL_S)
                next_due = self.uploader.next_due_in()
                if not self.stopping.is_set():
                    self._upload_wanted.wait(IDLE_RECHECK_S if next_due is None else min(next_due + 0.05, IDLE_RECHECK_S))
        finally:
            self.uploader.wait_in_flight()  # a stop lets the groups under way commit
            self.uploader.finish_requests()

    def _room_for_clean(self, files: list[tuple[int, int]]) -> None:  # called by upload groups, before they commit
        if not self._fenced():  # a fenced worker keeps what is local (see _fenced)
            self.evictor.make_room_for_clean(files)

    def _group_uploaded(self) -> None:
        self.context.wake_fuse()    # fsync and zero sync wait for these chunks
        self._upload_wanted.set()   # room for another group; the group made room for its clean chunks itself

    def _keep_loop(self) -> None:
        pins_applied_at = 0.0
        while not self.stopping.is_set():
            generation = self.listener.generation
            measure_started = time.monotonic()
            over = self.evictor.over_target()
            measure_s = time.monotonic() - measure_started
            if over and not self._fenced():
                self.evictor.evict()
            if time.monotonic() - pins_applied_at > 10 or self._pins_changed():
                if apply_pins(self.context):
                    self.listener.poke()
                pins_applied_at = time.monotonic()
            # Cheap check first; prime() measures again where the count is exact.
            if self.evictor.last_usage + self.context.chunk_size < self.evictor.low_watermark \
                    and prime(self.context):
                self.listener.poke()
            # A measure takes a query and a look at each chunk not uploaded: with a large
            # state or backlog (tar x, a create loop waking it on every close), one each
            # 50 ms would take a core (it walked every chunk file before decision 111).
            self.stopping.wait(max(KEEPER_MIN_INTERVAL_S, KEEPER_MEASURE_SHARE_INVERSE * measure_s))
            self._wait(generation, KEEPER_INTERVAL_S)

    def _pins_changed(self) -> bool:
        stamp = wakeup.last_notified_ns(self.context.cache.wake, "pins")
        if stamp is None:
            return False
        changed = stamp != getattr(self, "_pins_stamp", None)
        self._pins_stamp = stamp
        return changed

    # --- periodic jobs -------------------------------------------------------------------

    def _probe_remotes(self) -> None:
        """Look again at remotes that are not healthy; one that is back gets the backlog."""
        try:
            before = set(self.context.pool.durable_names())
            self.keeper.probe()
            if set(self.context.pool.durable_names()) - before:
                self.listener.poke()
        except Exception:
            log.exception("Checking the remotes failed; trying again in %.0fs", PROBE_INTERVAL_S)

    def _keep_lease(self) -> None:
        try:
            self.context.writer.heartbeat()
        except Exception:
            log.exception("Refreshing the writer lease failed; trying again in %.0fs",
                          self.context.writer.heartbeat_interval_s)

    def _fenced(self) -> bool:
        """Taken over: keep what is local, since the new writer's collector may delete objects
        that only this cache's state names."""
        return self.context.writer is not None and self.context.writer.role in (FENCED, REFUSED)

    def _collect_safely(self) -> None:
        try:
            self.collector.collect()
        except Exception:
            log.exception("Garbage collection failed; it runs again in %.0f minutes", GC_INTERVAL_S / 60)

    def heartbeat(self, stopped: bool = False) -> None:
        """Publish what `zero status` shows about the worker."""
        now = time.time()
        uploaded = self.uploader.uploaded_bytes
        self._rate_window = [(at, total) for at, total in self._rate_window if at > now - 60] + [(now, uploaded)]
        first_at, first_total = self._rate_window[0]
        rate = (uploaded - first_total) / (now - first_at) if now > first_at else 0.0
        with self.context.database.read() as connection:
            dirty, leased = backlog.dirty_totals(connection)
        status = {
            "pid": os.getpid(), "at": now, "stopped": stopped,
            "cache_usage_bytes": self.evictor.last_usage,
            "target_bytes": self.context.config.target_disk_usage_bytes,
            "upload_rate_bytes_per_s": rate, "dirty_chunks": dirty, "leased_chunks": leased,
            **self.published,
        }
        with self.context.database.write() as connection:
            state_db.set_meta(connection, "worker_status", json.dumps(status))
        if not self.uploader.in_flight():
            memory.release_free()  # the chunk buffers of the last burst (zero/memory.py)
