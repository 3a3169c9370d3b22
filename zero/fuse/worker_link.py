"""zero-fuse's side of fault-in and upload-on-fsync: ask the worker through
the database, wake it, and wait for its answer with a timeout.

zero-fuse never talks to a remote. When no worker answers, the caller gets
WorkerUnavailable and the log says why.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from zero import wakeup
from zero.cachedir import CacheDir
from zero.errors import WorkerUnavailable
from zero.locking import holder_pid
from zero.meta import backup
from zero.meta import writer as writer_lease
from zero.state import backlog, changelog, chunks, remotes, requests
from zero.state.chunks import Readiness
from zero.state.db import Database

log = logging.getLogger(__name__)

RECHECK_S = 1.0  # a lost wake-up costs at most this much latency
WAKE_COALESCE_S = 0.002  # wake-ups asked for within this window go out as one
WAKE_SOON_S = 0.1  # how long a wake-up for closed files may wait to share one with others
EVICTION_RECHECK_S = 0.25


class WorkerLink:
    def __init__(self, database: Database, cache: CacheDir, listener: wakeup.WakeListener, timeout_s: float,
                 on_fault_in: Callable[[], None] = lambda: None):
        self.database = database
        self.on_fault_in = on_fault_in  # counts a read that was not served from the cache
        self.cache = cache
        self.listener = listener
        self.timeout_s = timeout_s
        # Every close of a written file wakes the worker; touching the wake file
        # costs four system calls and an inotify event, so a thread sends them,
        # several at a time when files close in a burst (cp -r, untar).
        self._waker = wakeup.Waker(cache.wake, wakeup.WORKER, coalesce_s=WAKE_COALESCE_S, soon_s=WAKE_SOON_S)

    def worker_pid(self) -> int | None:
        return holder_pid(self.cache.lock_path("worker"))

    def wake_worker(self, soon: bool = False) -> None:
        """Wake the worker; with ``soon``, within WAKE_SOON_S. Closed files are only
        uploaded after uploadDelay, so their wake-ups can wait and go as one: each
        one sets all the worker's loops looking at the state, which took a third of
        a core in a create loop."""
        self._waker.wake(soon)

    def wake_worker_now(self) -> None:
        """Synchronous: for unmount, where the process may exit right after."""
        self._waker.wake_now()

    def wait_for_progress(self, timeout_s: float) -> None:
        """Wait until the worker reports progress (an upload or fetch finished) or the timeout."""
        self.listener.wait(self.listener.generation, timeout_s)

    def request_fetch(self, ino: int, idx: int, priority: int) -> None:
        with self.database.write() as connection:
            row = chunks.get(connection, ino, idx)
            if row is None or not chunks.needs_fetch(row):
                return
            requests.request_fetch(connection, ino, idx, priority)
        self.wake_worker()

    def request_fetches(self, ino: int, indexes, priority: int) -> None:
        if indexes:
            with self.database.write() as connection:
                for idx in indexes:
                    requests.request_fetch(connection, ino, idx, priority)
            self.wake_worker()

    def wait_local(self, ino: int, idx: int) -> None:
        """Return once chunk (ino, idx) is in the cache (or gone: truncated);
        raise WorkerUnavailable if the worker does not bring it in time."""
        self.on_fault_in()
        asked_at = None

        def arrived():
            nonlocal asked_at
            with self.database.read() as connection:
                row = chunks.get(connection, ino, idx)
                error = requests.fetch_error(connection, ino, idx) if row is not None else None
            if row is None or not chunks.needs_fetch(row):
                return True
            if error:  # ours, or left by an earlier attempt (a prefetch, a pin), which we retry
                with self.database.write() as connection:
                    requests.done_fetch(connection, ino, idx)
                if asked_at is not None:
                    raise WorkerUnavailable(f"zero-worker could not fetch chunk {idx} of inode {ino}: {error}")
            # Ask again now and then: the chunk may have been fetched and evicted
            # again between two looks, and that fetch deleted the request.
            if asked_at is None or time.monotonic() - asked_at >= RECHECK_S:
                self.request_fetch(ino, idx, requests.READER)
                asked_at = time.monotonic()
            return None

        wakeup.wait_for(self.listener, arrived, self.timeout_s,
                        lambda: WorkerUnavailable(self.why_no_answer(f"fetch chunk {idx} of inode {ino}")),
                        recheck_s=RECHECK_S)

    def wait_eviction_settled(self, ino: int, idx: int) -> None:
        """Wait, up to faultInTimeout, until chunk (ino, idx) is no longer clean
        without its file: an eviction committing now, or a killed worker's
        eviction that its restart completes (crash point evict.unlinked).
        Writing meanwhile would re-create the file empty and lose the chunk."""
        path = self.cache.chunk_path(ino, idx)

        def settled():
            with self.database.read() as connection:
                readiness = chunks.readiness(connection, ino, idx, lambda: os.path.exists(path))
            return None if readiness == Readiness.EVICTION_UNFINISHED else True

        wakeup.wait_for(self.listener, settled, self.timeout_s,
                        lambda: WorkerUnavailable(self.why_no_answer(
                            f"finish the interrupted eviction of chunk {idx} of inode {ino}")),
                        recheck_s=EVICTION_RECHECK_S)

    def wait_uploaded(self, ino: int, versions: dict[tuple[int, int], int]) -> None:
        """Return once each chunk in ``versions`` is uploaded at that version or
        later changed (a newer write is beyond this fsync's promise)."""
        with self.database.write() as connection:
            requests.request_upload(connection, ino)
        self.wake_worker()
        pending = versions

        def uploaded():
            nonlocal pending
            with self.database.read() as connection:
                pending = backlog.still_unuploaded(connection, pending)
            return None if pending else True

        wakeup.wait_for(self.listener, uploaded, self.timeout_s,
                        lambda: WorkerUnavailable(self.why_no_answer(
                            f"upload {len(pending)} chunk(s) of inode {ino}")),
                        recheck_s=RECHECK_S)

    def metadata_pending(self) -> bool:
        """Whether namespace changes wait for their metadata backup."""
        with self.database.read() as connection:
            return changelog.has_changes(connection)

    def wait_backed_up(self) -> None:
        """Return once a metadata segment in the remotes covers every change made so far
        (concurrent fsyncs share one segment)."""
        backup.wait_backed_up(self.database, self.listener, self.wake_worker, self.timeout_s,
                              why_no_answer=lambda: self.why_no_answer("back up the metadata naming the file"))

    def running_verdict(self) -> dict | None:
        """The running worker's own verdict on its role (zero.meta.writer); None when no
        worker runs or it has not decided yet. A verdict older than the worker's lock was
        left by an earlier worker that had the same pid (a container restarted)."""
        running = self.worker_pid()
        if running is None:
            return None
        verdict = writer_lease.read_verdict(self.database)
        if not verdict or verdict.get("pid") != running:
            return None
        try:
            locked_at = os.stat(self.cache.lock_path("worker")).st_mtime
        except OSError:
            return None
        return verdict if verdict.get("at", 0.0) >= locked_at else None

    def refusal(self) -> str | None:
        """Why the running worker uploads nothing from this cache (another machine
        writes the filesystem, or took it over), as the worker decided; None when it
        may upload, or has not decided yet."""
        return _not_writing_because(self.running_verdict())

    def last_refusal(self) -> str | None:
        """With no worker running: why the last one uploaded nothing from this cache, if
        it was refused or fenced. Starting it again would be refused again (it exits), so
        "start it" is the wrong advice; its own message says what to do."""
        return _not_writing_because(writer_lease.read_verdict(self.database))

    def why_no_answer(self, what: str) -> str:
        if self.worker_pid() is None:
            refused = self.last_refusal()
            if refused:
                return (f"zero-worker is not running, so nobody could {what}; the last one to run uploaded "
                        f"nothing from this cache, because {refused}")
            return (f"zero-worker is not running, so nobody could {what}; "
                    f"start it with: zero-worker {self.cache.root}")
        why = f"zero-worker (pid {self.worker_pid()}) did not {what} within {self.timeout_s:g}s"
        with self.database.read() as connection:
            down = [f"{row.name} is {row.health}" for row in remotes.all_rows(connection) if row.health != remotes.HEALTHY]
        if down:
            why += f": remote {'; remote '.join(down)} (`zero status` says why; it is retried until it is back)"
        return why


def _not_writing_because(verdict: dict | None) -> str | None:
    """A verdict's reason when its worker uploads nothing (refused, fenced, read-only)."""
    if not verdict or verdict.get("role") not in writer_lease.NOT_WRITING:
        return None
    return verdict.get("message") or verdict["role"]
