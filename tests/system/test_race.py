"""Races between zero-fuse's writers and readers and a worker that uploads and
evicts as hard as it can (issue #3, "A race test").

Several threads overwrite, append, truncate, rename and read files through the
mount for a fixed time, while zero-worker runs with a tiny targetDiskUsage and
no upload delay, and the page cache is dropped now and then, so that reads
really go to zero-fuse and evicted chunks are faulted back in. A model keeps,
per file, the bytes last written; each file has a lock, held across the
operation on the filesystem and the model's update, so both agree on the order.
Every read must return the model's bytes. The run must have evicted and
faulted in chunks (or it proved nothing); then everything is checked again
after `zero sync`, and after an unmount and a remount.
"""

from __future__ import annotations

import collections
import hashlib
import os
import random
import threading
import time
import traceback

import pytest

from support import zero_mounted
from workerkit import KIB, drop_caches, status_counters

CHUNK = 64 * KIB
CONFIG = dict(chunkSize="64KiB", targetDiskUsage="2MiB", lowWatermark=0.5, uploadDelay=0, prefetchChunks=2)
FILES = 10
MAX_SIZE = 640 * KIB
THREADS = 4
DIRS = ("a", "b", "c/d")


def digest(data) -> str:
    return hashlib.sha256(data).hexdigest()


class Tracked:
    """One file: where it is now, the bytes last written, and a few older versions."""

    def __init__(self, fid: int, path, data: bytes, fd: int, fd_writable: bool):
        self.fid = fid
        self.lock = threading.Lock()
        self.path = path
        self.data = bytearray(data)
        self.history: collections.deque[bytes] = collections.deque(maxlen=8)
        self.fd = fd                    # long-lived descriptor (read-only or read-write)
        self.fd_writable = fd_writable
        self.renames = 0

    def remember(self) -> None:
        self.history.append(bytes(self.data))


def explain(tracked: Tracked, got: bytes, how: str) -> str:
    """Where and how a read differs from the model: zeros (an eviction or fault-in
    bug) or bytes of an older version (a stale upload bug)."""
    want = bytes(tracked.data)
    if len(got) != len(want):
        detail = f"size {len(got)}, expected {len(want)}"
        if len(got) < len(want) and got == want[:len(got)]:
            return f"{tracked.path} read {how}: {detail} (a prefix of the expected bytes)"
    else:
        detail = f"size {len(got)} as expected"
    first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    chunk = first // CHUNK
    lo, hi = chunk * CHUNK, min((chunk + 1) * CHUNK, len(got))
    end = first
    while end < min(len(got), len(want)) and got[end] != want[end]:
        end += 1
    region = got[first:end]
    kind = "all zeros (eviction/fault-in bug?)" if region and not any(region) else "not zeros"
    older = [age for age, old in enumerate(reversed(tracked.history), 1)
             if old[lo:hi] == got[lo:hi] and old[lo:hi] != want[lo:hi]]
    if older:
        kind += f"; chunk {chunk} equals the version from {older[0]} write(s) ago (stale upload/fetch bug?)"
    return (f"{tracked.path} (file {tracked.fid}) read {how}: {detail}; first difference at offset {first} "
            f"(chunk {chunk}, {end - first} bytes differ from there): {kind}")


class Race:
    def __init__(self, m, seed: int):
        self.m = m
        self.seed = seed
        self.files: list[Tracked] = []
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.ops = collections.Counter()
        self.ops_lock = threading.Lock()
        self.names = 0
        self.names_lock = threading.Lock()

    def fresh_path(self, fid: int, rng: random.Random):
        with self.names_lock:
            self.names += 1
            n = self.names
        return self.m.mnt / rng.choice(DIRS) / f"f{fid}-{n}"

    def setup(self) -> None:
        rng = random.Random(self.seed)
        for folder in DIRS:
            os.makedirs(self.m.mnt / folder, exist_ok=True)
        for fid in range(FILES):
            path = self.fresh_path(fid, rng)
            data = os.urandom(rng.randrange(CHUNK, MAX_SIZE))
            with open(path, "wb") as out:
                out.write(data)
            writable = fid % 2 == 0  # half the files stay open for writing: leases released by quiet only
            fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
            self.files.append(Tracked(fid, path, data, fd, writable))

    # --- operations (each under the file's lock) ------------------------------------------

    def overwrite(self, t: Tracked, rng: random.Random) -> None:
        size = len(t.data)
        offset = rng.randrange(0, size + CHUNK // 2)
        length = min(rng.choice((1, 100, 4 * KIB, CHUNK - 7, CHUNK + 13, 3 * CHUNK)), MAX_SIZE - offset)
        if length <= 0:
            return
        piece = os.urandom(length)
        if t.fd_writable and rng.random() < 0.5:
            assert os.pwrite(t.fd, piece, offset) == length
        else:
            fd = os.open(t.path, os.O_WRONLY)
            try:
                assert os.pwrite(fd, piece, offset) == length
            finally:
                os.close(fd)
        t.remember()
        if offset > size:
            t.data.extend(bytes(offset - size))
        t.data[offset:offset + length] = piece

    def append(self, t: Tracked, rng: random.Random) -> None:
        length = min(rng.randrange(1, 2 * CHUNK), MAX_SIZE - len(t.data))
        if length <= 0:
            return self.truncate(t, rng)
        piece = os.urandom(length)
        with open(t.path, "ab") as out:
            out.write(piece)
        t.remember()
        t.data.extend(piece)

    def truncate(self, t: Tracked, rng: random.Random) -> None:
        size = len(t.data)
        if rng.random() < 0.6:
            new = rng.randrange(0, size + 1)  # shrink (often mid-chunk)
        else:
            new = min(MAX_SIZE, size + rng.randrange(1, 3 * CHUNK))  # grow: a hole
        if t.fd_writable and rng.random() < 0.5:
            os.ftruncate(t.fd, new)
        else:
            os.truncate(t.path, new)
        t.remember()
        if new < size:
            del t.data[new:]
        else:
            t.data.extend(bytes(new - size))

    def rename(self, t: Tracked, rng: random.Random) -> None:
        new = self.fresh_path(t.fid, rng)  # within or between folders; the model moves with it
        os.rename(t.path, new)
        t.path = new
        t.renames += 1

    def read_fresh(self, t: Tracked, rng: random.Random) -> None:
        with open(t.path, "rb") as source:
            got = source.read()
        self.check(t, got, "through a fresh open")

    def read_long(self, t: Tracked, rng: random.Random) -> None:
        size = os.fstat(t.fd).st_size
        got = b""
        while True:
            piece = os.pread(t.fd, max(size + 1 - len(got), 1), len(got))
            if not piece:
                break
            got += piece
        self.check(t, got, "through the long-lived descriptor")

    def read_range(self, t: Tracked, rng: random.Random) -> None:
        if not t.data:
            return
        offset = rng.randrange(0, len(t.data))
        length = rng.randrange(1, 2 * CHUNK)
        got = os.pread(t.fd, length, offset)
        want = bytes(t.data[offset:offset + length])
        if got != want:
            padded = bytes(t.data[:offset]) + got
            self.fail(explain(t, padded, f"through the long-lived descriptor at {offset}+{length}"))

    def check(self, t: Tracked, got: bytes, how: str) -> None:
        if len(got) != len(t.data) or digest(got) != digest(t.data):
            self.fail(explain(t, got, how))

    def fail(self, message: str) -> None:
        self.failures.append(message)
        self.stop.set()

    OPERATIONS = (("overwrite", 5), ("append", 2), ("truncate", 2), ("rename", 1),
                  ("read_fresh", 3), ("read_long", 3), ("read_range", 2))

    def run_thread(self, number: int) -> None:
        rng = random.Random(self.seed * 100 + number)
        names = [name for name, weight in self.OPERATIONS for _ in range(weight)]
        try:
            while not self.stop.is_set():
                t = rng.choice(self.files)
                name = rng.choice(names)
                with t.lock:
                    getattr(self, name)(t, rng)
                with self.ops_lock:
                    self.ops[name] += 1
        except BaseException:
            self.fail(f"thread {number}: {traceback.format_exc()}")

    def dropper(self) -> None:
        while not self.stop.wait(1.5):
            drop_caches()

    def run(self, seconds: float) -> None:
        threads = [threading.Thread(target=self.run_thread, args=(n,), daemon=True) for n in range(THREADS)]
        threads.append(threading.Thread(target=self.dropper, daemon=True))
        for thread in threads:
            thread.start()
        self.stop.wait(seconds)
        self.stop.set()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in threads), "a racing thread hung"
        assert not self.failures, "\n".join(self.failures[:5])

    def close_descriptors(self) -> None:
        for t in self.files:
            os.close(t.fd)

    def verify_all(self, when: str) -> None:
        drop_caches(*(t.path for t in self.files))
        problems = []
        for t in self.files:
            got = t.path.read_bytes()
            if len(got) != len(t.data) or digest(got) != digest(t.data):
                problems.append(explain(t, got, when))
        assert not problems, "\n".join(problems)
        listed = {p for folder in DIRS for p in (self.m.mnt / folder).iterdir() if p.is_file()}
        assert listed == {t.path for t in self.files}, (when, sorted(map(str, listed)))


def race(make_mount, seconds: float, seed: int) -> None:
    m = make_mount(worker=True, **CONFIG)
    r = Race(m, seed)
    r.setup()
    before = status_counters(m.zero("status", str(m.cache)).stdout)
    started = time.monotonic()
    r.run(seconds)
    counters = status_counters(m.zero("status", str(m.cache)).stdout)
    print(f"race for {time.monotonic() - started:.0f}s: {dict(r.ops)}; counters {counters}")
    # Without evictions and fault-ins under the racing threads, the test proved nothing.
    assert counters["evictions"] - before["evictions"] > 0, counters
    assert counters["fault_ins"] - before["fault_ins"] > 0, counters
    assert r.ops["rename"] and r.ops["truncate"] and r.ops["read_long"] and r.ops["read_fresh"], r.ops
    r.close_descriptors()

    m.zero("sync", str(m.mnt), timeout=120)
    r.verify_all("after zero sync")
    m.unmount()
    assert not zero_mounted(m.mnt)
    m.start_fuse()
    r.verify_all("after unmount and remount")


def test_race_readers_writers_and_a_hard_working_worker(make_mount):
    race(make_mount, seconds=20, seed=int(os.environ.get("ZERO_RACE_SEED", "1")))


@pytest.mark.soak
def test_race_soak(make_mount):
    race(make_mount, seconds=float(os.environ.get("ZERO_SOAK_SECONDS", "600")),
         seed=int(os.environ.get("ZERO_RACE_SEED", str(int(time.time())))))
