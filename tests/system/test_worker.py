"""zero-worker through the real commands: upload, eviction under
targetDiskUsage, fault-in, fsync and zero sync, files kept open, pins, a
missing worker, worker restarts, a corrupt object, a full cache disk,
prefetch, priming, dedup, an rsync bigger than the cache, and zero status.
Waits poll with deadlines; nothing sleeps blindly."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from zero.fsutil import zero_mounts

from support import EXPECTED_WARNINGS, ZeroMount, command
from workerkit import (deleted_chunk_files_held, tmpfs_at, KIB, MIB, State, cache_usage, drop_caches, object_path, remote_objects,
                       settle_evicted, sha256_of, wait_worker_ready,
                       status_chunk_states, status_counters, wait_until)


def write_file(path, data: bytes, block: int = MIB, fsync: bool = False, rate: float | None = None) -> None:
    """Write ``data`` in blocks; with ``rate`` (bytes/s), no faster than that."""
    started = time.monotonic()
    with open(path, "wb") as target:
        for start in range(0, len(data), block):
            target.write(data[start:start + block])
            if rate:
                ahead = started + (start + block) / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        if fsync:
            target.flush()
            os.fsync(target.fileno())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class UsageSampler(threading.Thread):
    """Every ~20 ms: the cache's real usage and the dirty data in it at that moment.

    Dirty data at a sample is the allocated size of the chunk files whose rows are
    ``dirty`` or ``uploading``. The state is read before and after the scan of the
    cache folder and the union is taken, so a chunk dirty at any moment of the scan
    counts as dirty (a chunk uploaded mid-scan is not charged to the worker)."""

    def __init__(self, mount: ZeroMount, interval: float = 0.02):
        super().__init__(daemon=True)
        self.mount = mount
        self.state = State(mount.cache)
        self.interval = interval
        self.stop_event = threading.Event()
        self.samples: list[tuple[float, int, int]] = []  # (time, usage, dirty bytes)
        self.error: BaseException | None = None

    def scan(self) -> tuple[int, int]:
        dirty_before = set(self.state.dirty_chunk_files())
        sizes = {}
        chunks = self.mount.cache / "chunks"
        for bucket in os.scandir(chunks):
            for entry in os.scandir(bucket.path):
                ino, _, idx = entry.name.partition("-")
                if not (ino.isdigit() and idx.isdigit()):
                    continue
                try:
                    sizes[(int(ino), int(idx))] = entry.stat(follow_symlinks=False).st_blocks * 512
                except FileNotFoundError:
                    pass
        dirty = dirty_before | set(self.state.dirty_chunk_files())
        return sum(sizes.values()), sum(size for key, size in sizes.items() if key in dirty)

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                usage, dirty = self.scan()
                self.samples.append((time.monotonic(), usage, dirty))
                self.stop_event.wait(self.interval)
        except BaseException as error:  # reported by stop()
            self.error = error

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)
        assert self.error is None, f"the sampler failed: {self.error!r}"
        assert len(self.samples) > 10, "the sampler took too few samples to mean anything"

    def worst(self, target: int) -> tuple[int, int, int]:
        """The sample that exceeded target + dirty the most: (excess, usage, dirty)."""
        return max(((usage - target - dirty), usage, dirty) for _, usage, dirty in self.samples)


def wait_mostly_remote(mount: ZeroMount, inos, at_least: int, timeout: float = 30.0) -> dict[str, int]:
    state = State(mount.cache)
    return wait_until(lambda: (lambda states: states if states.get("remote", 0) >= at_least else None)(
        state.states(inos)), timeout, f"{at_least} chunk(s) of inodes {list(inos)} to be evicted")


def test_eviction_keeps_the_cache_under_target_and_data_comes_back(make_mount):
    """A file three times the target, written and read back while the worker runs.

    The bound, from invariant 4: at every sample, the cache's real usage (st_blocks
    of the chunk files) is at most targetDiskUsage plus the dirty data in it at that
    moment (chunk files whose rows are dirty or uploading; see UsageSampler). Data
    that the worker has just uploaded but not yet evicted is NOT allowed for beyond
    a slack of one eviction round: GRACE is two chunks, for the few milliseconds
    between an upload's commit and the eviction it triggers.
    """
    target, chunk = 8 * MIB, 256 * KIB
    grace = 2 * chunk
    m = make_mount(worker=True, targetDiskUsage="8MiB", chunkSize="256KiB", uploadDelay=0, lowWatermark=0.8)
    data = os.urandom(24 * MIB)
    path = m.mnt / "big.bin"

    sampler = UsageSampler(m)
    sampler.start()
    started = time.monotonic()
    write_file(path, data, block=256 * KIB, rate=8 * MIB)  # ~3 s: the worker uploads and evicts meanwhile
    written_in = time.monotonic() - started
    sampler.stop()
    excess, usage, dirty = sampler.worst(target)
    assert excess <= grace, (f"while writing, the cache used {usage >> 10} KiB with {dirty >> 10} KiB dirty: "
                             f"{excess >> 10} KiB over the {target >> 10} KiB target beyond dirty data")

    m.zero("sync", str(m.mnt))
    ino = os.stat(path).st_ino
    total_chunks = len(data) // chunk
    wait_mostly_remote(m, [ino], at_least=total_chunks - target // chunk)
    assert cache_usage(m.cache) <= target

    print("before read", State(m.cache).states([ino]), status_counters(m.zero("status", str(m.cache)).stdout),
          deleted_chunk_files_held(m.fuse.pid, m.cache))
    drop_caches(path)
    reader = UsageSampler(m)
    reader.start()
    digest = sha256_of(path)
    reader.stop()
    assert digest == sha256(data), "the file read back after eviction differs from what was written"
    excess, usage, dirty = reader.worst(target)
    assert excess <= grace, (f"while reading back, the cache used {usage >> 10} KiB with {dirty >> 10} KiB "
                             f"dirty: {excess >> 10} KiB over the target beyond dirty data")

    counters = status_counters(m.zero("status", str(m.cache)).stdout)
    assert counters["uploads"] >= total_chunks
    assert counters["evictions"] > 0 and counters["fault_ins"] > 0, counters
    print(f"wrote 24 MiB in {written_in:.1f}s; peak usage while writing "
          f"{max(s[1] for s in sampler.samples) >> 10} KiB, reading {max(s[1] for s in reader.samples) >> 10} KiB; "
          f"{counters}")


# --- helpers for the tests below ---------------------------------------------------------------

LOCAL_STATES = {"clean", "dirty", "uploading"}


def status_text(mount: ZeroMount) -> str:
    return mount.zero("status", str(mount.cache)).stdout


def write_and_sync(mount: ZeroMount, files: dict[str, bytes]) -> dict[str, int]:
    """Write each file (in order, so the first is the least recently used), then
    `zero sync`; returns name -> inode."""
    inos = {}
    for name, data in files.items():
        path = mount.mnt / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file(path, data, block=256 * KIB)
        inos[name] = os.stat(path).st_ino
    mount.zero("sync", str(mount.mnt))
    return inos


def wait_all_remote(mount: ZeroMount, inos, timeout: float = 30.0) -> None:
    """Every chunk of ``inos`` is evicted (the filler written after them pushed them out)."""
    state = State(mount.cache)
    inos = list(inos)

    def done():
        states = state.states(inos)
        return states if states and set(states) == {"remote"} else None
    wait_until(done, timeout, f"every chunk of inodes {inos} to be evicted (states now: {state.states(inos)})")


def read_at(path, offset: int, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def read_error(path, offset: int, size: int) -> tuple[OSError | None, float]:
    """(the error a read raised or None, seconds it took)."""
    started = time.monotonic()
    try:
        read_at(path, offset, size)
    except OSError as error:
        return error, time.monotonic() - started
    return None, time.monotonic() - started


class StateWatcher(threading.Thread):
    """Samples the chunk states of some inodes until stopped; remembers every state seen."""

    def __init__(self, mount: ZeroMount, inos, interval: float = 0.02):
        super().__init__(daemon=True)
        self.state = State(mount.cache)
        self.inos = list(inos)
        self.interval = interval
        self.seen: set[str] = set()
        self.samples = 0
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                self.seen |= set(self.state.states(self.inos))
                self.samples += 1
                self.stop_event.wait(self.interval)
        except BaseException as error:
            self.error = error

    def stop(self) -> set[str]:
        self.stop_event.set()
        self.join(timeout=30)
        assert self.error is None, f"the state watcher failed: {self.error!r}"
        assert self.samples > 5, "the state watcher took too few samples to mean anything"
        return self.seen


# --- 1. fsync and zero sync ------------------------------------------------------------------------

def test_fsync_and_zero_sync_return_once_the_data_is_in_the_remote(make_mount):
    # uploadDelay 60: nothing is uploaded on its own during the test, only because fsync/sync asked.
    m = make_mount(worker=True, chunkSize="256KiB", uploadDelay=60)
    wait_worker_ready(m)
    state = State(m.cache)
    data = os.urandom(MIB + 100 * KIB)  # 5 chunks, the last one partial
    with open(m.mnt / "fsynced.bin", "wb") as target:
        target.write(data)
        target.flush()
        ino = os.fstat(target.fileno()).st_ino
        # The chunks this sequential write filled were handed over already (decision 66);
        # the partial last one stays with the writer until fsync.
        assert state.chunks_of(ino)[4] == "dirty", \
            f"before fsync the chunk being written should be dirty (uploadDelay is 60 s): {state.chunks_of(ino)}"
        os.fsync(target.fileno())
        rows = state.chunk_rows(ino)
    assert [(idx, chunk_state) for idx, chunk_state, _ in rows] == [(idx, "clean") for idx in range(5)], \
        f"after fsync returned, every chunk should be uploaded (clean): {rows}"
    for idx, _, key in rows:
        assert key, f"chunk {idx} is clean but names no object"
        assert object_path(m.remote, key).stat().st_size > 0, f"the object of chunk {idx} is empty"

    other = os.urandom(3 * 256 * KIB + 5)
    with open(m.mnt / "synced.bin", "wb") as out:  # back to front: no chunk is handed over before close
        for start in reversed(range(0, len(other), 256 * KIB)):
            os.pwrite(out.fileno(), other[start:start + 256 * KIB], start)
    ino2 = os.stat(m.mnt / "synced.bin").st_ino
    assert set(state.chunks_of(ino2).values()) == {"dirty"}, \
        f"a closed file should stay dirty for uploadDelay (60 s): {state.chunks_of(ino2)}"
    m.zero("sync", str(m.mnt))
    not_uploaded = state.dirty_chunk_files()
    assert not not_uploaded, f"after zero sync returned, chunks were still dirty or uploading: {not_uploaded}"
    rows = state.chunk_rows(ino2)
    assert len(rows) == 4 and all(chunk_state == "clean" for _, chunk_state, _ in rows), rows
    for idx, _, key in rows:
        object_path(m.remote, key)
    assert (m.mnt / "synced.bin").read_bytes() == other


# --- 2. a file that stays open ---------------------------------------------------------------------

def test_unmount_waits_for_the_upload_of_files_zero_fuse_let_go_of_from_memory(make_mount):
    """Unmount waits until what is dirty is in the remote (decision 3), also for files
    zero-fuse no longer holds in memory (memoryInodes, decision 75): closed and idle,
    they were let go while other files were created."""
    m = make_mount(chunkSize="64KiB", uploadDelay=3600, memoryInodes=4)  # nothing uploads on its own
    # Less than a chunk: a sequential writer's filled chunks would be uploaded at once (decision 66).
    (m.mnt / "early.bin").write_bytes(os.urandom(1000))
    ino = os.stat(m.mnt / "early.bin").st_ino
    state = State(m.cache)
    wait_until(lambda: state.query("SELECT count(*) FROM chunks WHERE ino = ? AND leased = 0", ino) == [(1,)], 30,
               "the close to hand early.bin's chunk to the worker")
    for i in range(20):  # each new inode past memoryInodes lets the idle ones go
        (m.mnt / f"later-{i}").write_bytes(b"x")
    assert set(state.chunks_of(ino).values()) == {"dirty"}

    m.unmount()
    assert set(state.chunks_of(ino).values()) == {"clean"}, "unmount returned before early.bin was uploaded"


def test_a_file_kept_open_gets_its_quiet_chunks_uploaded_and_the_writer_never_blocks(make_mount):
    chunk = 64 * KIB
    m = make_mount(worker=True, chunkSize="64KiB", uploadDelay=0.5)
    wait_worker_ready(m)
    state = State(m.cache)
    path = m.mnt / "growing.log"
    written = bytearray()
    latencies = []
    clean_while_open: dict[int, str] = {}
    appends = 0
    deadline = time.monotonic() + 40
    with open(path, "ab", buffering=0) as log_file:
        ino = os.fstat(log_file.fileno()).st_ino
        # Like a log: a little every 0.2 s (the pace is the workload, not a wait), at least 6 s long,
        # until some chunk went all the way to the remote while the file is still open.
        while appends < 30 or not clean_while_open:
            assert time.monotonic() < deadline, (
                f"no chunk of a file kept open was uploaded within 40 s of appending; states: "
                f"{state.chunks_of(ino)}")
            block = os.urandom(12 * KIB)
            started = time.monotonic()
            log_file.write(block)
            latencies.append(time.monotonic() - started)
            written += block
            appends += 1
            states = state.chunks_of(ino)
            clean_while_open = {idx: s for idx, s in states.items() if s == "clean"}
            time.sleep(0.2)
        current = (len(written) - 1) // chunk
        assert all(idx < current for idx in clean_while_open), \
            f"the chunk being appended to ({current}) was marked clean: {states}"
    assert max(latencies) < 2.0, (f"an append blocked for {max(latencies):.2f} s while the worker uploaded "
                                  f"the file's quiet chunks")
    assert path.read_bytes() == bytes(written), "the file read back differs from what was appended"


def test_a_sequential_writer_s_filled_chunks_upload_while_it_writes_on_and_a_rewrite_goes_again(make_mount):
    # uploadDelay of an hour: only the hand-over of filled chunks can upload anything while the file is open.
    chunk = 64 * KIB
    m = make_mount(worker=True, chunkSize="64KiB", uploadDelay=3600)
    wait_worker_ready(m)
    state = State(m.cache)
    path = m.mnt / "film.mkv"
    data = bytearray(os.urandom(5 * chunk + chunk // 2))
    with open(path, "wb", buffering=0) as film:
        ino = os.fstat(film.fileno()).st_ino
        for start in range(0, len(data), 16 * KIB):
            film.write(data[start:start + 16 * KIB])
        filled = {idx: "clean" for idx in range(5)}
        wait_until(lambda: {idx: s for idx, s in state.chunks_of(ino).items() if idx < 5} == filled, 30,
                   f"the five filled chunks to be uploaded while the file is open; states: {state.chunks_of(ino)}")
        assert state.chunks_of(ino)[5] == "dirty", "the chunk still being written was handed over"
        # Going back is not sequential: chunk 1 is leased again and stays with the writer until close.
        data[chunk + 100:chunk + 200] = b"x" * 100
        os.pwrite(film.fileno(), b"x" * 100, chunk + 100)
        assert state.chunks_of(ino)[1] == "dirty"
        os.fsync(film.fileno())
        assert set(state.chunks_of(ino).values()) == {"clean"}, state.chunks_of(ino)
    m.zero("sync", str(m.mnt))
    drop_caches(path)
    assert path.read_bytes() == bytes(data), "the file read back differs from what was written"


# --- 3. pins ----------------------------------------------------------------------------------------

def test_pinned_file_and_tree_are_faulted_in_and_stay_local_until_unpinned(make_mount):
    m = make_mount(worker=True, targetDiskUsage="4MiB", chunkSize="256KiB", uploadDelay=0)
    wait_worker_ready(m)
    state = State(m.cache)
    contents = {"pinned.bin": os.urandom(MIB), "tree/a.bin": os.urandom(512 * KIB),
                "tree/sub/b.bin": os.urandom(512 * KIB + 3)}
    # Uploaded before the filler is written, so they are the least recently used clean chunks
    # when it pushes the cache over its target (uploads of different files overlap).
    inos = write_and_sync(m, contents)
    write_and_sync(m, {"filler1.bin": os.urandom(6 * MIB)})
    kept = [inos[name] for name in contents]
    wait_all_remote(m, kept)

    m.zero("pin", str(m.mnt / "pinned.bin"))
    m.zero("pin", str(m.mnt / "tree"))
    wait_until(lambda: set(state.states(kept)) <= {"clean"}, 30,
               f"the pinned chunks to be faulted in (states now: {state.states(kept)})")

    evictions_before = status_counters(status_text(m))["evictions"]
    watcher = StateWatcher(m, kept)
    watcher.start()
    pressure = write_and_sync(m, {"filler2.bin": os.urandom(6 * MIB)})
    wait_until(lambda: state.states(pressure.values()).get("remote", 0) >= 8, 30,
               "the worker to evict the second filler (eviction pressure)")
    seen = watcher.stop()
    assert seen <= LOCAL_STATES, f"a pinned chunk left the cache under eviction pressure: states seen {seen}"
    assert status_counters(status_text(m))["evictions"] > evictions_before

    text = status_text(m)
    assert "pins:" in text, f"zero status does not list the pins:\n{text}"
    assert "/pinned.bin  1.0 MiB, 1.0 MiB in the cache" in text, text
    assert "/tree  1.0 MiB, 1.0 MiB in the cache" in text, text
    for name, data in contents.items():
        assert (m.mnt / name).read_bytes() == data, f"{name} read back wrong while pinned"

    m.zero("unpin", str(m.mnt / "pinned.bin"), str(m.mnt / "tree"))
    assert "pins:" not in status_text(m), "zero status still lists pins after zero unpin"
    write_and_sync(m, {"filler3.bin": os.urandom(6 * MIB)})
    wait_until(lambda: state.states(kept).get("remote", 0) > 0, 30,
               f"unpinned chunks to be evicted again (states now: {state.states(kept)})")


# --- 4. no worker: EIO after faultInTimeout, then the same read works ---------------------------------

def test_a_read_of_an_evicted_chunk_fails_with_eio_without_a_worker_and_works_once_it_runs(make_mount):
    m = make_mount(worker=True, targetDiskUsage="2MiB", chunkSize="256KiB", uploadDelay=0, faultInTimeout=2)
    wait_worker_ready(m)
    data = os.urandom(MIB)
    inos = write_and_sync(m, {"away.bin": data, "filler.bin": os.urandom(4 * MIB)})
    wait_all_remote(m, [inos["away.bin"]])
    assert m.stop_worker() == 0, "zero-worker did not exit cleanly on SIGTERM"

    path = m.mnt / "away.bin"
    settle_evicted(m, path)
    error, took = read_error(path, 256 * KIB, 256 * KIB)
    assert error is not None, "a read of an evicted chunk succeeded with no worker running"
    assert error.errno == errno.EIO, f"expected EIO, got {error!r}"
    assert 1.5 <= took < 20, f"the read failed after {took:.1f}s; faultInTimeout is 2 s"
    assert "zero-worker is not running" in m.fuse_log(), \
        f"zero-fuse did not log that the worker is not running:\n{m.fuse_log()[-2000:]}"

    m.start_worker()
    wait_worker_ready(m)
    assert read_at(path, 256 * KIB, 256 * KIB) == data[256 * KIB:512 * KIB], \
        "once the worker runs, the same read returns wrong bytes"
    drop_caches(path)
    assert path.read_bytes() == data


# --- 5. stopping and restarting the worker -------------------------------------------------------------

def test_worker_stops_cleanly_on_sigterm_and_a_second_worker_is_refused(make_mount):
    m = make_mount(worker=True, chunkSize="256KiB", uploadDelay=0)
    wait_worker_ready(m)
    first_pid = m.worker.pid
    second = subprocess.run([command("zero-worker"), str(m.cache)], env=m.env, capture_output=True,
                            text=True, timeout=60)
    said = second.stdout + second.stderr
    assert second.returncode != 0, f"a second zero-worker on the same cache started:\n{said}"
    assert f"pid {first_pid}" in said, f"the refusal does not name the running worker (pid {first_pid}):\n{said}"
    assert m.worker.poll() is None, "the first zero-worker died when a second one was refused"

    assert m.stop_worker() == 0, f"zero-worker exited non-zero on SIGTERM:\n{m.worker_log()[-2000:]}"
    assert "Worker stopped cleanly" in m.worker_log(), m.worker_log()[-2000:]

    # Written while no worker runs: uploaded by the next one.
    data = os.urandom(MIB)
    (m.mnt / "later.bin").write_bytes(data)
    ino = os.stat(m.mnt / "later.bin").st_ino
    assert set(State(m.cache).chunks_of(ino).values()) == {"dirty"}
    m.start_worker()
    wait_worker_ready(m)
    m.zero("sync", str(m.mnt))
    assert set(State(m.cache).chunks_of(ino).values()) == {"clean"}, State(m.cache).chunks_of(ino)
    assert (m.mnt / "later.bin").read_bytes() == data


# --- 6. a corrupt object -------------------------------------------------------------------------------

CORRUPT_LOG = "cannot be read back"            # the worker's line
CORRUPT_READ_LOG = "zero-worker could not fetch"  # zero-fuse's line for the failed read


def test_a_corrupt_object_gives_eio_names_the_object_and_nothing_else_is_lost(make_mount):
    m = make_mount(worker=True, targetDiskUsage="2MiB", chunkSize="256KiB", uploadDelay=0, faultInTimeout=10,
                   allowed_log=(CORRUPT_LOG, CORRUPT_READ_LOG, "quarantined"))
    wait_worker_ready(m)
    state = State(m.cache)
    victim, bystander = os.urandom(MIB), os.urandom(MIB)
    inos = write_and_sync(m, {"victim.bin": victim, "bystander.bin": bystander, "filler.bin": os.urandom(4 * MIB)})
    wait_all_remote(m, [inos["victim.bin"], inos["bystander.bin"]])

    rows = state.chunk_rows(inos["victim.bin"])
    key = rows[1][2]
    stored = object_path(m.remote, key)
    original = stored.read_bytes()
    damaged = bytearray(original)
    for position in range(len(damaged) // 2, len(damaged) // 2 + 8):
        damaged[position] ^= 0xFF
    stored.write_bytes(bytes(damaged))

    path = m.mnt / "victim.bin"
    settle_evicted(m, path)
    error, took = read_error(path, 256 * KIB, 4096)
    assert error is not None, "reading a chunk whose object is corrupt returned data"
    assert error.errno == errno.EIO, f"expected EIO for a corrupt object, got {error!r}"
    log_lines = [line for line in m.worker_log().splitlines() if CORRUPT_LOG in line]
    assert any(key in line and "/victim.bin" in line and "failed authentication" in line for line in log_lines), \
        f"the worker log does not name the corrupt object ({key}) and the file it belongs to:\n" + \
        "\n".join(log_lines)
    wait_until(lambda: state.chunks_of(inos["victim.bin"])[1] == "remote", 10,
               f"the corrupt chunk to be left remote (retryable); states: {state.chunks_of(inos['victim.bin'])}")

    assert (m.mnt / "bystander.bin").read_bytes() == bystander, "another file read back wrong"
    for idx in (0, 2, 3):
        assert read_at(path, idx * 256 * KIB, 256 * KIB) == victim[idx * 256 * KIB:(idx + 1) * 256 * KIB], \
            f"chunk {idx} of the file with one corrupt chunk read back wrong"

    # With room in the cache, priming brings evicted chunks back, but must not fetch the corrupt one
    # (and log it) again every round: only a reader asks again.
    os.unlink(m.mnt / "filler.bin")
    wait_until(lambda: state.chunks_of(inos["bystander.bin"]).get(3) == "clean", 30,
               "priming to bring evicted chunks back once the filler was deleted")
    wait_until(lambda: not state.query("SELECT 1 FROM fetch_requests WHERE error IS NULL"), 30,
               "the worker to answer every fault-in asked for so far")
    reported = m.worker_log().count(CORRUPT_LOG)
    heartbeat = lambda: json.loads(state.query("SELECT value FROM meta WHERE key = 'worker_status'")[0][0])["at"]
    since = heartbeat()
    wait_until(lambda: heartbeat() >= since + 3 * 2.0, 30, "three more worker heartbeats (keeper rounds)")
    assert m.worker_log().count(CORRUPT_LOG) == reported, \
        "the worker keeps fetching the corrupt object again (priming) and logging it"

    # Repaired (say, from a backup): the same read works again.
    stored.write_bytes(original)
    drop_caches(path)
    assert read_at(path, 256 * KIB, 256 * KIB) == victim[256 * KIB:512 * KIB], \
        "after the object was repaired the chunk still does not read back"


# --- 7. a full cache disk --------------------------------------------------------------------------------

DISK_FULL_LOG = "The cache disk has less than"


@pytest.fixture
def small_cache_disk(tmp_path):
    """<tmp>/fs/cache on a 64 MiB tmpfs."""
    with tmpfs_at(tmp_path / "fs" / "cache", 64) as cache:
        yield cache


def write_until_full(directory, file_size: int, block: int, rate: float, limit: int):
    """Write files of ``file_size`` until a write fails; returns (contents that
    write() accepted, per file name; the error). Never more than ``limit`` bytes."""
    accepted: dict[str, bytearray] = {}
    started, total = time.monotonic(), 0
    while total < limit:
        name = f"f{len(accepted):03d}.bin"
        accepted[name] = bytearray()
        fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            while len(accepted[name]) < file_size:
                data = os.urandom(block)
                try:
                    done = os.write(fd, data)
                except OSError as error:
                    return accepted, error
                accepted[name] += data[:done]
                total += done
                ahead = started + total / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)  # the writer's pace (see the test), not a wait for zero
        finally:
            os.close(fd)
    return accepted, None


def test_a_full_cache_disk_gives_enospc_and_loses_nothing(small_cache_disk, tmp_path):
    # zero-fuse checks the free space at most every 0.5 s; writing at 16 MiB/s can run at most ~8 MiB
    # past minFreeDisk (24 MiB) between two checks, so the tmpfs itself never fills: the disk-full
    # answer is zero's, taken while the state database still has room to work.
    m = ZeroMount(tmp_path / "fs", chunkSize="256KiB", minFreeDisk="24MiB", uploadDelay=0)
    assert m.cache == small_cache_disk
    allowed = EXPECTED_WARNINGS + (DISK_FULL_LOG,)
    try:
        m.start_fuse()
        accepted, error = write_until_full(m.mnt, file_size=4 * MIB, block=256 * KIB, rate=16 * MIB, limit=80 * MIB)
        assert error is not None, "80 MiB were written into a cache on a 64 MiB disk without an error"
        assert error.errno == errno.ENOSPC, f"a full cache disk gave {error!r}, expected ENOSPC"
        written = sum(len(data) for data in accepted.values())
        assert written >= 24 * MIB, f"only {written >> 20} MiB could be written before ENOSPC on a 64 MiB disk"
        assert DISK_FULL_LOG in m.fuse_log(), "zero-fuse did not log why writes fail"

        def check_all(when: str) -> None:
            drop_caches()
            for name, data in accepted.items():
                assert (m.mnt / name).read_bytes() == bytes(data), f"{name} read back wrong {when}"
        check_all("after ENOSPC")
        m.unmount()
        m.start_fuse()
        check_all("after unmount and mount")

        for name in list(accepted)[:4]:
            os.unlink(m.mnt / name)

        def write_again():
            try:
                (m.mnt / "after.bin").write_bytes(b"x" * (256 * KIB))
            except OSError as error:
                assert error.errno == errno.ENOSPC, f"writing after deleting files gave {error!r}"
                return False
            return True
        wait_until(write_again, 10, "writes to work again after deleting 16 MiB of files")
        assert (m.mnt / "after.bin").read_bytes() == b"x" * (256 * KIB)
    finally:
        m.close()
    problems = m.unexpected_log_lines(allowed)
    assert not problems, "zero logged unexpected warnings or errors:\n" + "\n".join(problems)


# --- 8. prefetch -------------------------------------------------------------------------------------------

def test_a_sequential_read_of_an_evicted_file_prefetches_the_next_chunks(make_mount):
    """The kernel sends its read-ahead reads at once and those waiting on fault-ins finish out of
    order, so zero-fuse must judge a read sequential when it arrives, not when it is done."""
    chunk, count = 256 * KIB, 40
    m = make_mount(worker=True, targetDiskUsage="4MiB", chunkSize="256KiB", uploadDelay=0, prefetchChunks=4)
    wait_worker_ready(m)
    state = State(m.cache)
    data = os.urandom(count * chunk)
    inos = write_and_sync(m, {"movie.bin": data, "filler.bin": os.urandom(6 * MIB)})
    ino = inos["movie.bin"]
    wait_all_remote(m, [ino])
    path = m.mnt / "movie.bin"
    settle_evicted(m, path)
    fault_ins_before = status_counters(status_text(m))["fault_ins"]

    # zero-fuse asks for the next prefetchChunks chunks when a read moves on sequentially into a
    # new chunk. The reader reads in order into chunk 2 (576 KiB); the kernel reads on ahead of it,
    # its read-ahead window (the mount's read_ahead_kb, which zero-fuse raises to 1 MiB) and one
    # more it starts at the window's end, so no read reaches past 576 KiB + 2 read-aheads.
    with open(path, "rb", buffering=0) as reader:
        got = b"".join(reader.read(64 * KIB) for _ in range(9))
    assert got == data[:9 * 64 * KIB]
    ahead = [3, 4, 5]
    wait_until(lambda: all(state.chunks_of(ino)[idx] in LOCAL_STATES for idx in ahead), 10,
               f"chunks {ahead}, ahead of the reader, to be prefetched (states: {state.chunks_of(ino)})")
    wait_until(lambda: not state.query("SELECT 1 FROM fetch_requests WHERE ino = ?", ino), 20,
               "the prefetches to finish")
    read_ahead = int(Path(f"/sys/class/bdi/{zero_mounts(m.mnt)[-1][1]}/read_ahead_kb").read_text()) * KIB
    last_read = (9 * 64 * KIB + 2 * read_ahead - 1) // chunk
    states = state.chunks_of(ino)
    beyond = [idx for idx in range(last_read + 4 + 1, count) if states[idx] != "remote"]
    assert not beyond, f"chunks beyond chunk {last_read} + prefetchChunks (4) came back too: {beyond} ({states})"
    assert states[count - 1] == "remote"  # there was room for the check: the file goes on far beyond
    fault_ins = status_counters(status_text(m))["fault_ins"] - fault_ins_before
    assert fault_ins >= 3 + len(ahead), f"only {fault_ins} fault-in(s) for a read that touched three chunks"

    drop_caches(path)
    assert sha256_of(path) == sha256(data), "the prefetched file reads back wrong"


# --- 9. priming ---------------------------------------------------------------------------------------------

def test_when_the_cache_has_room_again_recently_used_evicted_chunks_come_back(make_mount):
    m = make_mount(worker=True, targetDiskUsage="4MiB", chunkSize="256KiB", uploadDelay=0, lowWatermark=0.9)
    wait_worker_ready(m)
    state = State(m.cache)
    # older.bin is used least recently, then recent.bin, then the filler pushes both out.
    inos = write_and_sync(m, {"older.bin": os.urandom(2 * MIB), "recent.bin": os.urandom(2 * MIB),
                              "filler.bin": os.urandom(6 * MIB)})
    wait_all_remote(m, [inos["older.bin"], inos["recent.bin"]])
    fault_ins_before = status_counters(status_text(m))["fault_ins"]

    os.unlink(m.mnt / "filler.bin")  # nobody reads anything: whatever comes back is priming
    wait_until(lambda: set(state.chunks_of(inos["recent.bin"]).values()) == {"clean"}, 30,
               f"priming to bring the most recently used file back (states: {state.chunks_of(inos['recent.bin'])})")
    wait_until(lambda: state.states([inos["older.bin"]]).get("clean", 0) > 0, 30,
               "priming to go on with the next most recently used file")
    wait_until(lambda: not state.query("SELECT 1 FROM fetch_requests") and "fetching" not in state.states(), 30,
               "priming to finish what it queued")
    older = state.chunks_of(inos["older.bin"])
    assert "remote" in older.values(), \
        f"priming brought back more than the low watermark (3.6 MiB) allows: older.bin is {older}"
    assert cache_usage(m.cache) <= 4 * MIB, f"priming pushed the cache over its target: {cache_usage(m.cache)}"
    assert status_counters(status_text(m))["fault_ins"] - fault_ins_before >= 8


# --- 10. dedup and rename -----------------------------------------------------------------------------------

def test_identical_content_is_stored_once_and_a_rename_uploads_nothing(make_mount):
    m = make_mount(worker=True, chunkSize="256KiB", uploadDelay=0)
    wait_worker_ready(m)
    state = State(m.cache)
    data = os.urandom(MIB)
    write_file(m.mnt / "a.bin", data, fsync=True)
    objects = len(remote_objects(m.remote))
    assert objects == 4, f"a 1 MiB file of 256 KiB chunks made {objects} objects, expected 4"
    counters = status_counters(status_text(m))

    write_file(m.mnt / "b.bin", data, fsync=True)
    keys_a = [key for _, _, key in state.chunk_rows(os.stat(m.mnt / "a.bin").st_ino)]
    keys_b = [key for _, _, key in state.chunk_rows(os.stat(m.mnt / "b.bin").st_ino)]
    assert keys_a == keys_b, "two files with identical content name different objects"
    assert len(remote_objects(m.remote)) == objects, "a copy of a file added objects to the remote"
    after = status_counters(status_text(m))
    assert after["uploads"] == counters["uploads"], f"a copy of a file was uploaded again: {counters} -> {after}"
    assert after["dedup_hits"] == counters["dedup_hits"] + 4, f"{counters} -> {after}"

    block = os.urandom(256 * KIB)
    write_file(m.mnt / "repeats.bin", block * 4, fsync=True)
    assert len(remote_objects(m.remote)) == objects + 1, "four identical chunks in one file made more than one object"

    counters = status_counters(status_text(m))
    ino = os.stat(m.mnt / "a.bin").st_ino
    os.rename(m.mnt / "a.bin", m.mnt / "renamed.bin")
    os.makedirs(m.mnt / "elsewhere")
    os.rename(m.mnt / "renamed.bin", m.mnt / "elsewhere" / "renamed.bin")
    m.zero("sync", str(m.mnt))
    assert set(state.chunks_of(ino).values()) == {"clean"}, f"a rename made chunks dirty: {state.chunks_of(ino)}"
    assert len(remote_objects(m.remote)) == objects + 1, "a rename added objects to the remote"
    after = status_counters(status_text(m))
    assert (after["uploads"], after["dedup_hits"]) == (counters["uploads"], counters["dedup_hits"]), \
        f"a rename uploaded something: {counters} -> {after}"
    assert (m.mnt / "elsewhere" / "renamed.bin").read_bytes() == data


# --- 11. rsync into a small cache ----------------------------------------------------------------------------

def make_source_tree(root, seed: int = 3) -> int:
    """~40 MiB of mixed files: random, repeated, zeros, many small ones, a symlink, an empty folder."""
    import random
    rng = random.Random(seed)
    total = 0

    def put(relative: str, data: bytes) -> None:
        nonlocal total
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        total += len(data)
    for number in range(8):
        put(f"random/r{number}.bin", rng.randbytes(3 * MIB + rng.randrange(100 * KIB)))
    repeated = rng.randbytes(2 * MIB)
    for number in range(5):
        put(f"copies/{number}/same.bin", repeated)
    put("zeros.bin", bytes(2 * MIB))
    for number in range(150):
        put(f"small/d{number % 7}/s{number}.txt", rng.randbytes(rng.randrange(40 * KIB)))
    put("small/empty.txt", b"")
    (root / "empty-dir").mkdir()
    os.symlink("random/r0.bin", root / "link-to-r0")
    return total


def chunk_contents(root, chunk: int) -> dict[tuple[str, int], str]:
    """(file, chunk index) -> digest of that chunk's bytes, for every regular file under root."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            for idx in range(0, (len(data) + chunk - 1) // chunk):
                found[(str(path.relative_to(root)), idx)] = sha256(data[idx * chunk:(idx + 1) * chunk])
    return found


def test_rsync_of_a_tree_bigger_than_the_cache_reads_back_identical(make_mount, tmp_path):
    chunk = 256 * KIB
    m = make_mount(worker=True, targetDiskUsage="8MiB", chunkSize="256KiB", uploadDelay=0)
    wait_worker_ready(m)
    state = State(m.cache)
    source = tmp_path / "source"
    total = make_source_tree(source)
    assert total > 36 * MIB
    copied = subprocess.run(["rsync", "-a", f"{source}/", f"{m.mnt}/copy/"], capture_output=True, text=True,
                            timeout=180)
    assert copied.returncode == 0, f"rsync into the mount failed ({copied.returncode}):\n{copied.stderr}"
    m.zero("sync", str(m.mnt))

    all_chunks = sum(state.states().values())
    assert all_chunks >= total // chunk, f"only {all_chunks} chunks for {total >> 20} MiB"
    # 40 MiB through an 8 MiB cache: at least 100 of the ~150 full chunks of the big files must be out.
    wait_until(lambda: state.states().get("remote", 0) >= 100 and cache_usage(m.cache) <= 8 * MIB, 60,
               f"most data to be evicted and the cache under its target (states {state.states()}, "
               f"usage {cache_usage(m.cache) >> 10} KiB)")
    settle_evicted(m)
    compared = subprocess.run(["diff", "-r", "--no-dereference", str(source), str(m.mnt / "copy")],
                              capture_output=True, text=True, timeout=180)
    assert compared.returncode == 0, f"the copy differs from the source:\n{compared.stdout[-3000:]}{compared.stderr}"
    assert os.readlink(m.mnt / "copy" / "link-to-r0") == "random/r0.bin"
    counters = status_counters(status_text(m))
    assert counters["fault_ins"] > 0, f"diff read everything back without a single fault-in: {counters}"

    # Dedup, counted where it is deterministic: in the remote. How many uploads were dedup *hits*
    # depends on timing (identical chunks that land in one upload group are each sent, to the
    # same key, before either is recorded), but what is stored does not: one object per
    # distinct chunk content, every copy of a chunk naming the same object.
    contents = chunk_contents(source, chunk)
    keys = {key for (key,) in state.query("SELECT object_key FROM chunks")}
    assert None not in keys, "a chunk names no object after zero sync"
    assert len(keys) == len(set(contents.values())), \
        f"{len(keys)} distinct objects named for {len(set(contents.values()))} distinct chunk contents"
    copies = [[key for _, _, key in state.chunk_rows(os.stat(m.mnt / "copy" / "copies" / str(n) / "same.bin").st_ino)]
              for n in range(5)]
    assert all(keys_of_copy == copies[0] for keys_of_copy in copies), "identical files name different objects"
    m.zero("gc", str(m.cache), "--grace", "0", "--delete")  # objects of chunks overwritten mid-rsync are garbage
    stored = [path for path in m.remote.glob("*/objects/*/*") if path.is_file()]
    assert sorted(path.name for path in stored) == sorted(keys), \
        f"the remote holds {len(stored)} objects for {len(keys)} distinct chunk contents"


# --- 12. zero status ---------------------------------------------------------------------------------------------

def test_zero_status_explains_dirty_data_backlog_evictions_fault_ins_and_why_it_is_over_target(make_mount):
    m = make_mount(worker=False, targetDiskUsage="2MiB", chunkSize="256KiB", uploadDelay=0)
    data = os.urandom(3 * MIB)
    (m.mnt / "big.bin").write_bytes(data)

    text = status_text(m)
    backlog = re.search(r"backlog:\s+([\d.]+) (\w+) dirty in (\d+) chunk\(s\), uploading at ([\d.]+) (\S+)/s", text)
    assert backlog, f"zero status shows no upload backlog:\n{text}"
    assert backlog.group(1, 2, 3) == ("3.0", "MiB", "12"), f"wrong backlog for 3 MiB written:\n{text}"
    assert float(backlog.group(4)) == 0, f"an upload rate with no worker running:\n{text}"
    assert re.search(r"OVER TARGET by 1\.0 MiB: 3\.0 MiB of written data is not uploaded yet; "
                     r"zero-worker is not running", text), f"zero status does not say why it is over target:\n{text}"
    assert "zero-worker: not running" in text, text

    m.start_worker()
    wait_worker_ready(m)
    m.zero("sync", str(m.mnt))

    def settled():
        text = status_text(m)
        rate = re.search(r"uploading at ([\d.]+) (\S+)/s", text)
        counters = status_counters(text)
        if "OVER TARGET" not in text and rate and float(rate.group(1)) > 0 and counters["evictions"] > 0:
            return text
    text = wait_until(settled, 30, f"zero status to show uploads at a rate, evictions and no excess:\n"
                                   f"{status_text(m)}")
    assert "backlog:    0 B dirty in 0 chunk(s)" in text, text
    counters = status_counters(text)
    assert counters["uploads"] == 12, f"3 MiB in 256 KiB chunks should be 12 uploads: {counters}"
    assert "remote" in status_chunk_states(text) and status_chunk_states(text)["remote"] > 0, text
    assert "zero-worker: running" in text, text

    settle_evicted(m, m.mnt / "big.bin")
    assert (m.mnt / "big.bin").read_bytes() == data
    assert status_counters(status_text(m))["fault_ins"] > 0

    m.zero("pin", str(m.mnt / "big.bin"))
    text = wait_until(lambda: (lambda text: text if "pinned" in text and "OVER TARGET" in text else None)(
        status_text(m)), 30, f"zero status to say pinned data keeps it over target:\n{status_text(m)}")
    assert re.search(r"OVER TARGET by [\d.]+ \w+: pinned files hold [\d.]+ \w+, more than the target leaves", text), text
    assert "/big.bin  3.0 MiB, 3.0 MiB in the cache" in text, text
