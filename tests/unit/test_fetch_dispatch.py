"""The worker's fetch dispatcher, driven with a stand-in fetcher whose fetches
block until the test lets them finish: which requests start, and when."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from zero import wakeup
from zero.state import requests
from zero.worker.fetcher import FetchDispatcher

THREADS = 4
CHUNK = 1024
WAIT_S = 10.0


class BlockingFetcher:
    """Serves ``pending`` from a list (as the fetch_requests table does, best
    priority first) and holds each fetch until ``finish`` lets it go."""

    def __init__(self):
        self.context = SimpleNamespace(chunk_size=CHUNK, cache=SimpleNamespace(root="/"))
        self.queue: list[SimpleNamespace] = []
        self.started: list[tuple[int, int]] = []
        self.changed = threading.Condition()
        self._release: dict[tuple[int, int], threading.Event] = {}

    def ask(self, ino: int, idx: int, priority: int) -> None:
        with self.changed:
            self.queue.append(SimpleNamespace(ino=ino, idx=idx, priority=priority, plain_bytes=None))
            self.queue.sort(key=lambda row: row.priority)

    def pending(self, limit: int) -> list:
        with self.changed:
            return list(self.queue[:limit])

    def fetch(self, ino: int, idx: int, priority: int) -> None:
        gate = threading.Event()
        with self.changed:
            self._release[(ino, idx)] = gate
            self.started.append((ino, idx))
            self.changed.notify_all()
        assert gate.wait(WAIT_S), f"chunk {idx} was never let go"
        with self.changed:  # done: its request row goes, as Fetcher.fetch deletes it
            self.queue = [row for row in self.queue if (row.ino, row.idx) != (ino, idx)]

    def finish(self, idx: int) -> None:
        with self.changed:
            self._release[(1, idx)].set()

    def wait_started(self, count: int) -> list[tuple[int, int]]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.started) >= count, WAIT_S), \
                f"only {self.started} started, expected {count} fetches"
            return list(self.started)


@pytest.fixture
def running(tmp_path):
    fetcher = BlockingFetcher()
    room_asked = []
    dispatcher = FetchDispatcher(fetcher, lambda incoming, in_flight_bytes: room_asked.append(
        (incoming, in_flight_bytes)), threads=THREADS)
    listener = wakeup.WakeListener(tmp_path, wakeup.WORKER)
    stopping = threading.Event()
    thread = threading.Thread(target=dispatcher.run, args=(stopping, listener, 30.0, 5.0), daemon=True)
    thread.start()
    yield fetcher, listener, room_asked
    stopping.set()
    listener.poke()
    for gate_idx in range(64):
        if (1, gate_idx) in fetcher._release:
            fetcher.finish(gate_idx)
    thread.join(WAIT_S)
    assert not thread.is_alive(), "the dispatcher did not stop"


def test_a_reader_starts_at_once_while_prefetches_fill_the_other_threads(running):
    fetcher, listener, _ = running
    for idx in range(10):
        fetcher.ask(1, idx, requests.PREFETCH)
    listener.poke()
    assert len(fetcher.wait_started(THREADS - 1)) == THREADS - 1
    fetcher.ask(1, 50, requests.READER)
    listener.poke()
    started = fetcher.wait_started(THREADS)
    assert started[-1] == (1, 50), f"the reader's chunk queued behind prefetches: {started}"


def test_a_finished_fetch_frees_its_thread_for_the_next_request_at_once(running):
    fetcher, listener, room_asked = running
    for idx in range(6):
        fetcher.ask(1, idx, requests.READER)
    listener.poke()
    assert fetcher.wait_started(THREADS) == [(1, idx) for idx in range(THREADS)]
    fetcher.finish(2)  # one fetch ends while the other three are still running
    started = fetcher.wait_started(THREADS + 1)
    assert started[THREADS] == (1, 4), f"no new fetch began when one finished: {started}"
    # Room for the newcomer is made counting the three fetches still under way.
    assert room_asked[-1] == (CHUNK, 3 * CHUNK)
