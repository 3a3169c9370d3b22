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

Three more races the random mix never makes, each on one file while the worker
uploads, evicts and faults in under it: two handles writing interleaved regions
of one file at once; a file unlinked while another thread still reads and
writes it through its handle; and a new file renamed over a file that another
thread holds open and reads (it keeps reading the old bytes; new opens read
the new ones).
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
from workerkit import KIB, State, drop_caches, settle_evicted, status_counters, wait_until, wait_worker_ready

CHUNK = 64 * KIB
# memoryInodes: zero-fuse lets idle inodes go and reads them back all the time, under the races.
CONFIG = dict(chunkSize="64KiB", targetDiskUsage="2MiB", lowWatermark=0.5, uploadDelay=0, prefetchChunks=2,
              memoryInodes=4)
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


# --- one file, several handles, while the worker uploads and evicts ----------------------------------
#
# Each test below runs its threads until the worker has evicted and faulted in chunks under them
# (waiting on the counters, with a deadline), so the race it names really happened; then it stops
# them and checks every byte, again after `zero sync` and eviction, and after a remount.

PROGRESS_TIMEOUT_S = 90


def uncache(fd: int) -> None:
    """Drop the file's pages from the kernel's page cache: the next read goes to zero-fuse."""
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def read_all(fd: int, size: int, piece: int = CHUNK) -> bytes:
    return b"".join(os.pread(fd, piece, offset) for offset in range(0, size, piece))


def counters_of(m) -> dict[str, int]:
    return status_counters(m.zero("status", str(m.cache)).stdout)


class Threads:
    """Worker threads that run a step until told to stop; the first failure stops all of them."""

    def __init__(self):
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.threads: list[threading.Thread] = []
        self.steps = collections.Counter()

    def start(self, name: str, step) -> None:
        def run():
            try:
                while not self.stop.is_set():
                    step()
                    self.steps[name] += 1
            except BaseException:
                self.failures.append(f"{name}: {traceback.format_exc()}")
                self.stop.set()
        thread = threading.Thread(target=run, name=name, daemon=True)
        self.threads.append(thread)
        thread.start()

    def run_until(self, predicate, what: str) -> None:
        """Let the threads run until ``predicate`` holds (or one of them fails), then stop them."""
        try:
            wait_until(lambda: self.stop.is_set() or predicate(), PROGRESS_TIMEOUT_S, what, interval=0.2)
        finally:
            self.stop.set()
            for thread in self.threads:
                thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in self.threads), "a racing thread hung"
        assert not self.failures, "\n".join(self.failures[:3])


def moved_on(m, before: dict[str, int], evictions: int, fault_ins: int):
    def check():
        now = counters_of(m)
        return (now["evictions"] - before["evictions"] >= evictions
                and now["fault_ins"] - before["fault_ins"] >= fault_ins)
    return check


def verify_file(m, path, want: bytes, when: str) -> None:
    drop_caches(path)
    got = path.read_bytes()
    assert len(got) == len(want) and digest(got) == digest(want), \
        f"{path.name} {when}: {first_difference(got, want)}"


def first_difference(got: bytes, want: bytes) -> str:
    at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    region = got[at:at + 64]
    return (f"size {len(got)} (expected {len(want)}), first difference at offset {at} (chunk {at // CHUNK})"
            + ("; zeros there" if region and not any(region) else ""))


def test_two_handles_write_interleaved_regions_of_one_file(make_mount):
    """Two threads, each with its own handle, rewrite alternate 24 KiB regions of one 3 MiB file
    (so both write into the same chunks) and read their own regions back, while the worker
    uploads and evicts (2 MiB cache) and faults chunks back in under them."""
    region, regions = 24 * KIB, 128
    m = make_mount(worker=True, **CONFIG)
    wait_worker_ready(m)
    path = m.mnt / "shared.bin"
    model = bytearray(os.urandom(region * regions))
    path.write_bytes(model)
    before = counters_of(m)
    threads = Threads()

    fds = [os.open(path, os.O_RDWR) for _ in (0, 1)]

    def writer(k: int):
        rng = random.Random(k)
        fd = fds[k]
        mine = [i for i in range(regions) if i % 2 == k]  # only this thread writes these bytes

        def step():
            for i in rng.sample(mine, 8):
                piece = os.urandom(region)
                assert os.pwrite(fd, piece, i * region) == region
                model[i * region:(i + 1) * region] = piece
            uncache(fd)
            for i in rng.sample(mine, 4):
                got = os.pread(fd, region, i * region)
                want = bytes(model[i * region:(i + 1) * region])
                assert got == want, f"handle {k}, region {i} (offset {i * region}): {first_difference(got, want)}"
        return step

    try:
        for k in (0, 1):
            threads.start(f"writer-{k}", writer(k))
        worker_moved_on = moved_on(m, before, evictions=16, fault_ins=4)
        # Both conditions waited for: on a busy machine one writer may be scheduled little
        # while the worker reaches its counts (asserting its steps afterwards was a race).
        threads.run_until(lambda: min(threads.steps["writer-0"], threads.steps["writer-1"]) >= 3
                          and worker_moved_on(),
                          "the worker to evict and fault in chunks of the file under the two writers, "
                          "each writer to run at least three rounds")
    finally:
        for fd in fds:
            os.close(fd)
    want = bytes(model)
    verify_file(m, path, want, "after the writers closed")
    m.zero("sync", str(m.mnt), timeout=120)
    settle_evicted(m, path)
    verify_file(m, path, want, "after zero sync and eviction")
    m.unmount()
    m.start_fuse()
    verify_file(m, path, want, "after a remount")


def test_a_file_unlinked_while_open_is_still_read_and_written_through_its_handle(make_mount):
    """One thread keeps writing and reading a 3 MiB file through its handle while the main
    thread unlinks it and the worker uploads, evicts and faults its chunks in; after the
    last close the inode, its chunks and (after gc) its objects are gone."""
    m = make_mount(worker=True, **CONFIG)
    wait_worker_ready(m)
    state = State(m.cache)
    path = m.mnt / "doomed.bin"
    model = bytearray(os.urandom(3 * 1024 * KIB))
    path.write_bytes(model)
    fd = os.open(path, os.O_RDWR)
    ino = os.fstat(fd).st_ino
    lock = threading.Lock()
    rng = random.Random(2)
    threads = Threads()

    def step():
        with lock:
            offset = rng.randrange(0, len(model) - 8 * KIB)
            piece = os.urandom(rng.choice((100, 4 * KIB, 8 * KIB)))
            assert os.pwrite(fd, piece, offset) == len(piece)
            model[offset:offset + len(piece)] = piece
            uncache(fd)
            at = rng.randrange(0, len(model))
            got = os.pread(fd, 2 * CHUNK, at)
            want = bytes(model[at:at + 2 * CHUNK])
            assert got == want, f"read through the handle at {at}: {first_difference(got, want)}"

    try:
        threads.start("reader-writer", step)
        wait_until(lambda: threads.stop.is_set() or "remote" in state.states([ino]), PROGRESS_TIMEOUT_S,
                   "the worker to evict some chunk of the open file")
        os.unlink(path)
        assert not path.exists()
        assert os.fstat(fd).st_nlink == 0
        before = counters_of(m)
        threads.run_until(moved_on(m, before, evictions=8, fault_ins=4),
                          "the worker to evict and fault in chunks of the unlinked file under its user")
        with lock:
            uncache(fd)
            got = read_all(fd, len(model))
        assert digest(got) == digest(model), f"the unlinked file read whole: {first_difference(got, bytes(model))}"
        # Before the last close: right after it zero-fuse deletes these rows.
        keys = {key for (key,) in state.query(
            "SELECT object_key FROM chunks WHERE ino = ? AND object_key IS NOT NULL", ino)}
    finally:
        os.close(fd)
    wait_until(lambda: not state.query("SELECT 1 FROM chunks WHERE ino = ?", ino), 30,
               "the chunks of the unlinked file to be deleted after its last close")
    # zero-fuse unlinks the files right after the commit that deleted the rows, outside its locks:
    # wait for that state too (a leak would still time out here).
    wait_until(lambda: not list((m.cache / "chunks").rglob(f"{ino}-*")), 30,
               "the chunk files of the deleted inode to be removed after its rows")
    assert os.listdir(m.mnt) == [], os.listdir(m.mnt)
    m.zero("gc", str(m.cache), "--grace", "0", "--delete")
    stored = {p.name for p in m.remote.glob("*/objects/*/*")}
    assert keys and not keys & stored, f"{len(keys & stored)} object(s) of the deleted file are left in the remote"
    m.unmount()
    m.start_fuse()
    assert os.listdir(m.mnt) == []


def test_rename_over_a_file_being_read_keeps_the_reader_on_the_old_content(make_mount):
    """A reader holds a 3 MiB file open and keeps reading it (page cache dropped) while a new
    file is renamed over its name and the worker uploads and evicts both: the reader reads the
    OLD bytes exactly, every new open reads the NEW ones."""
    m = make_mount(worker=True, **CONFIG)
    wait_worker_ready(m)
    target = m.mnt / "current.bin"
    old = os.urandom(3 * 1024 * KIB)
    new = os.urandom(3 * 1024 * KIB + 777)
    target.write_bytes(old)
    m.zero("sync", str(m.mnt), timeout=120)
    state = State(m.cache)
    fd = os.open(target, os.O_RDONLY)
    old_ino = os.fstat(fd).st_ino
    rng = random.Random(3)
    threads = Threads()
    renamed = threading.Event()
    reads_after_rename = collections.Counter()

    def reader():
        uncache(fd)
        at = rng.randrange(0, len(old))
        got = os.pread(fd, 3 * CHUNK, at)
        want = old[at:at + 3 * CHUNK]
        assert got == want, f"the reader of the old file at {at}: {first_difference(got, want)}"
        if renamed.is_set():
            reads_after_rename["reader"] += 1

    def opener():
        if not renamed.is_set():
            return
        with open(target, "rb") as fresh:
            uncache(fresh.fileno())
            at = rng.randrange(0, len(new))
            fresh.seek(at)
            got = fresh.read(2 * CHUNK)
        want = new[at:at + 2 * CHUNK]
        assert got == want, f"a fresh open after the rename at {at}: {first_difference(got, want)}"
        reads_after_rename["opener"] += 1

    try:
        threads.start("reader", reader)
        threads.start("opener", opener)
        staged = m.mnt / "current.bin.new"
        with open(staged, "wb") as out:
            out.write(new)
        before = counters_of(m)
        os.rename(staged, target)
        renamed.set()
        threads.run_until(lambda: moved_on(m, before, evictions=8, fault_ins=4)()
                          and min(reads_after_rename["reader"], reads_after_rename["opener"]) >= 20,
                          "the worker to evict and fault in chunks under the reader after the rename")
        uncache(fd)
        got = read_all(fd, len(old))
        assert digest(got) == digest(old), f"the old file read whole: {first_difference(got, old)}"
    finally:
        os.close(fd)
    wait_until(lambda: not state.query("SELECT 1 FROM chunks WHERE ino = ?", old_ino), 30,
               "the chunks of the replaced file to be deleted after the reader closed it")
    assert sorted(os.listdir(m.mnt)) == ["current.bin"]
    verify_file(m, target, new, "after the rename")
    m.zero("sync", str(m.mnt), timeout=120)
    settle_evicted(m, target)
    verify_file(m, target, new, "after zero sync and eviction")
    m.unmount()
    m.start_fuse()
    verify_file(m, target, new, "after a remount")
