"""zero-worker through the real commands: upload, eviction under
targetDiskUsage, fault-in, fsync, pins, a missing worker, a corrupt object
and a full cache disk. Waits poll with deadlines; nothing sleeps blindly."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import threading
import time

import pytest

from support import ZeroMount
from workerkit import (deleted_chunk_files_held, KIB, MIB, State, cache_usage, drop_caches, object_path, remote_objects, sha256_of,
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
