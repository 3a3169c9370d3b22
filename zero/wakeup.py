"""Cross-process wake-ups: one process touches a file, the other hears it
through watchdog (inotify) and re-checks the database.

The database is the truth; a wake-up only says "look now". Waiters still
pass a timeout, so a lost event costs latency, never correctness.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, TypeVar

from watchdog.events import FileClosedEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

WORKER = "worker"  # fuse -> worker: new dirty data, fault-in or upload requests
FUSE = "fuse"      # worker -> fuse: a fetch or an upload finished

T = TypeVar("T")

log = logging.getLogger(__name__)


WAKE_FILE = "now"


def target_dir(wake_dir: Path | str, target: str) -> str:
    """Each target has a folder of its own, so a process watches only its own
    wake-ups, not those it sends (fuse wakes the worker on every close burst)."""
    path = os.path.join(wake_dir, target)
    if not os.path.isdir(path):
        if os.path.lexists(path) and not os.path.isdir(path):
            try:
                os.unlink(path)  # a wake file of an older zero, where targets shared one folder
            except FileNotFoundError:
                pass  # the other process replaced it first
        os.makedirs(path, exist_ok=True)
    return path


def notify(wake_dir: Path, target: str) -> None:
    path = os.path.join(wake_dir, target, WAKE_FILE)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except (FileNotFoundError, NotADirectoryError):
        fd = os.open(os.path.join(target_dir(wake_dir, target), WAKE_FILE),
                     os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, b".")
        if os.fstat(fd).st_size > 4096:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)


class Waker:
    """Sends wake-ups to ``target`` from a thread, so the caller never waits on the
    file system, and as one when several are asked for within ``coalesce_s``
    (or, with ``soon``, within ``soon_s``: for wake-ups that may wait a little)."""

    def __init__(self, wake_dir: Path | str, target: str, coalesce_s: float = 0.002, soon_s: float = 0.1):
        self.wake_dir = wake_dir
        self.target = target
        self.coalesce_s = coalesce_s
        self.soon_s = soon_s
        self._lock = threading.Condition()
        self._now = False
        self._soon_since: float | None = None
        self._thread: threading.Thread | None = None

    def wake(self, soon: bool = False) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._send, name=f"zero-wake-{self.target}", daemon=True)
                self._thread.start()
            if not soon:
                self._now = True
            elif self._soon_since is None:
                self._soon_since = time.monotonic()
            else:
                return
            self._lock.notify()

    def wake_now(self) -> None:
        """Synchronous: for a process about to exit."""
        with self._lock:
            self._now, self._soon_since = False, None
        notify(self.wake_dir, self.target)

    def _wait_until_wanted(self) -> None:
        with self._lock:
            while not self._now:
                if self._soon_since is None:
                    self._lock.wait()
                    continue
                remaining = self._soon_since + self.soon_s - time.monotonic()
                if remaining <= 0:
                    break
                self._lock.wait(remaining)
            self._now, self._soon_since = False, None

    def _send(self) -> None:
        while True:
            self._wait_until_wanted()
            try:
                notify(self.wake_dir, self.target)
            except OSError as error:  # the other process still rechecks on its own timer
                log.warning("Could not wake %s (%s); it will notice within its recheck interval",
                            self.target, error)
            time.sleep(self.coalesce_s)


def last_notified_ns(wake_dir: Path, target: str) -> int | None:
    """When ``target`` was last notified (for targets nobody listens to, such as pins)."""
    try:
        return os.stat(os.path.join(wake_dir, target, WAKE_FILE)).st_mtime_ns
    except (FileNotFoundError, NotADirectoryError):
        return None


class _Handler(FileSystemEventHandler):
    def __init__(self, listener: "WakeListener"):
        self.listener = listener

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.listener.poke()


class WakeListener:
    """Counts wake-ups for one target; wait() returns when a new one arrives."""

    def __init__(self, wake_dir: Path, target: str):
        self.wake_dir = Path(wake_dir)
        self.target = target
        self._condition = threading.Condition()
        self._generation = 0
        self._observer: Observer | None = None
        self._also: list[threading.Event] = []

    def start(self) -> None:
        self._observer = Observer()
        # One event per wake-up: the close of the write, not also its open and modify.
        self._observer.schedule(_Handler(self), target_dir(self.wake_dir, self.target), recursive=False,
                                event_filter=[FileClosedEvent])
        self._observer.daemon = True
        self._observer.start()

    def stop(self) -> None:
        if self._observer is not None:
            # watchdog logs an ERROR when an event races its own shutdown
            # ("queue_events() called when the thread is inactive"); nothing is lost.
            logging.getLogger("watchdog").setLevel(logging.CRITICAL)
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

    def also_set(self, event: threading.Event) -> None:
        """Set ``event`` on every wake-up too: for a loop that waits on its own
        work finishing as well as on the other process."""
        if event not in self._also:
            self._also.append(event)

    def poke(self) -> None:
        with self._condition:
            self._generation += 1
            self._condition.notify_all()
        for event in self._also:
            event.set()

    @property
    def generation(self) -> int:
        return self._generation

    def wait(self, since_generation: int, timeout: float) -> int:
        """Wait until a wake-up newer than ``since_generation`` or the timeout."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while self._generation == since_generation:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            return self._generation


def wait_for(listener: WakeListener, check: Callable[[], T | None], timeout_s: float,
             on_timeout: Callable[[], Exception], recheck_s: float = 1.0) -> T:
    """Call ``check`` until it returns something other than None, re-checking on
    every wake-up of ``listener`` and at least every ``recheck_s`` (a lost
    wake-up costs latency, never correctness); after ``timeout_s`` raise what
    ``on_timeout`` builds. The one wait loop of zero: fault-ins, uploads on
    fsync, evictions settling, `zero sync`."""
    deadline = time.monotonic() + timeout_s
    while True:
        generation = listener.generation
        result = check()
        if result is not None:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise on_timeout()
        listener.wait(generation, min(remaining, recheck_s))
