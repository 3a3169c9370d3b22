"""zero-fuse's data path in-process: a sequential writer hands filled chunks to
the worker early (decision 66), and fsync still makes every chunk not yet
uploaded durable in the cache, not only those it holds the lease of."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import stat
import time

import pytest

from zero.cachedir import CacheDir
from zero.config import Config
from zero.fuse import data as data_module
from zero.fuse import flusher as flusher_module
from zero.fuse import leases as leases_module
from zero.fuse.chunkfiles import ChunkFiles
from zero.fuse.data import DataPath
from zero.fuse.flusher import Flusher
from zero.fuse.leases import Leases
from zero.fuse.tree import Tree
from zero.state import chunks, db, namespace, requests

CHUNK = 64 * 1024


class NoWorker:
    woken = 0

    def wake_worker(self):
        self.woken += 1

    def worker_pid(self):
        return None

    def metadata_pending(self):
        return False


class NoFlusher:
    def admit_write(self, size):
        pass

    def record_access(self, ino, idx, at):
        pass


@pytest.fixture
def data_path(tmp_path):
    cache = CacheDir(tmp_path / "cache")
    cache.prepare()
    database = db.open_database(cache.root / "state.sqlite3", CHUNK)
    files = ChunkFiles(cache)
    tree = Tree(database, files=files, kernel_cache=None)
    worker = NoWorker()
    leases = Leases(tree, cache, files, worker)
    config = Config(source="test", chunk_size_bytes=CHUNK, fsync_waits_for_upload=False)
    yield DataPath(tree, leases, NoFlusher(), files, config, worker, CHUNK)
    database.dispose()


def new_file(data_path: DataPath):
    with data_path.database.write() as connection:
        ino = namespace.insert_inode(connection, mode=stat.S_IFREG | 0o600, uid=0, gid=0, nlink=1, size=0,
                                     atime_ns=1, mtime_ns=1, ctime_ns=1, rdev=0)
        namespace.insert_dentry(connection, namespace.ROOT_INO, b"f", ino)
    return data_path.tree.inode(ino)


def recording(sync, synced: list):
    """``sync`` (os.fsync, os.fdatasync) that also notes the name of each file it syncs."""
    def wrapper(fd):
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        sync(fd)
    return wrapper


def leased(data_path: DataPath, ino: int) -> dict[int, bool]:
    with data_path.database.read() as connection:
        rows = connection.exec_driver_sql("SELECT idx, leased FROM chunks WHERE ino = ?", (ino,)).all()
    return {idx: bool(flag) for idx, flag in rows}


def test_a_sequential_writer_hands_over_each_chunk_it_filled_and_asks_for_its_upload(data_path):
    inode = new_file(data_path)
    for offset in range(0, 2 * CHUNK + 100, 8192):
        data_path.write(inode, None, b"a" * 8192, offset)
    assert leased(data_path, inode.ino) == {0: False, 1: False, 2: True}
    assert set(inode.leases) == {2}
    with data_path.database.read() as connection:
        assert requests.pending_uploads(connection) == [inode.ino]
        # Committed with the release: once uploaded and evicted, a chunk has no file
        # from which the reconciler could restore a size lost in a crash.
        assert namespace.get_inode(connection, inode.ino).size >= 2 * CHUNK
    assert data_path.worker.woken >= 2


def test_a_write_elsewhere_keeps_its_lease_until_close(data_path):
    inode = new_file(data_path)
    data_path.write(inode, None, b"a" * CHUNK, 0)
    data_path.write(inode, None, b"b" * 100, 10)  # back into the chunk handed over: not sequential
    data_path.write(inode, None, b"c" * CHUNK, 3 * CHUNK)  # a jump: not sequential either
    assert leased(data_path, inode.ino) == {0: True, 3: True}


def test_fsync_syncs_the_chunks_handed_over_early_too(data_path, monkeypatch):
    inode = new_file(data_path)
    data_path.write(inode, None, b"a" * (2 * CHUNK + 100), 0)
    assert set(inode.leases) == {2}
    synced = []
    monkeypatch.setattr(data_module.os, "fsync", recording(os.fsync, synced))
    data_path.fsync(inode)
    chunk_files = {f"{inode.ino}-{idx}" for idx in range(3)}
    assert chunk_files <= set(synced), f"fsync left {sorted(chunk_files - set(synced))} unsynced"


def test_a_release_dates_each_chunk_by_its_last_write_not_by_the_commit(data_path):
    # A file's tail is released at its close batch; dated by that commit it would look
    # newer than chunks of the next file handed over meanwhile, and be evicted after them.
    inode = new_file(data_path)
    data_path.write(inode, None, b"a" * 100, 0)
    inode.leases[0] -= 100.0  # the write happened 100 s ago
    data_path.leases.release(inode)
    with data_path.database.read() as connection:
        (last_access,) = connection.exec_driver_sql("SELECT last_access FROM chunks WHERE ino = ?",
                                                    (inode.ino,)).one()
    assert last_access == pytest.approx(time.time() - 100.0, abs=5.0)


def test_a_write_that_turns_a_clean_chunk_dirty_syncs_its_file_first(data_path, monkeypatch):
    # Uploads and fault-ins leave a clean chunk's file to the kernel's writeback (decisions
    # 73, 76). Once the row says dirty, a power cut would upload whatever the disk held for
    # the bytes the write did not cover: zeros, where the remote had the file's data.
    inode = new_file(data_path)
    data_path.write(inode, None, b"a" * 100, 0)
    data_path.leases.release(inode)
    database = sqlite3.connect(data_path.database.path)
    with database:  # what an upload leaves (the worker's side is not under test here)
        database.execute("UPDATE chunks SET state = 'clean', object_key = 'k' WHERE ino = ?", (inode.ino,))
    database.close()
    synced = []
    monkeypatch.setattr(leases_module.os, "fdatasync", recording(os.fdatasync, synced))
    data_path.write(inode, None, b"b" * 10, 50)
    assert synced == [f"{inode.ino}-0"]
    data_path.leases.release(inode)
    data_path.write(inode, None, b"c" * 10, 60)  # dirty already: nothing to sync
    assert synced == [f"{inode.ino}-0"]


def test_unuploaded_data_is_measured_from_a_bounded_sample_when_there_is_much_of_it(data_path, monkeypatch):
    inode = new_file(data_path)
    for idx in range(40):
        data_path.write(inode, None, b"x" * CHUNK, idx * CHUNK)  # 40 dirty chunks of one size
    config = dataclasses.replace(data_path.config, target_disk_usage_bytes=20 * CHUNK)
    flusher = Flusher(data_path.tree, data_path.leases, data_path.files, data_path.files.cache, config, NoWorker())
    measured = []
    bytes_of = data_path.files.cache.bytes_of
    monkeypatch.setattr(data_path.files.cache, "bytes_of", lambda ids: measured.append(len(ids)) or bytes_of(ids))
    flusher._measure_dirty()
    exact = flusher.dirty_bytes
    assert exact >= 40 * CHUNK and measured == [40]
    assert flusher.dirty_over_target

    monkeypatch.setattr(flusher_module, "DIRTY_SAMPLE", 8)
    flusher._measure_dirty()
    assert measured[-1] == 8
    assert flusher.dirty_bytes == exact  # chunks of one size: the sample's mean is exact
    assert flusher.dirty_over_target


class EvictingWorker(NoWorker):
    """A worker whose fault-ins keep losing the race with its evictor: the chunk
    is back in the cache only at the ``arrives_at``-th wait."""

    def __init__(self, data_path: DataPath, ino: int, data: bytes, arrives_at: int, timeout_s: float):
        self.data_path, self.ino, self.data, self.arrives_at = data_path, ino, data, arrives_at
        self.timeout_s = timeout_s
        self.waits = 0

    def wait_local(self, ino, idx):
        self.waits += 1
        if self.waits == self.arrives_at:
            with open(self.data_path.files.cache.chunk_path(ino, idx), "wb") as chunk_file:
                chunk_file.write(self.data)


def evicted_file(data_path: DataPath, data: bytes, chunk_count: int = 1):
    """A file whose ``chunk_count`` chunks are all in the remote only (``data`` is chunk 0's)."""
    inode = new_file(data_path)
    inode.size = max(len(data), (chunk_count - 1) * CHUNK + 1)
    os.makedirs(os.path.dirname(data_path.files.cache.chunk_path(inode.ino, 0)), exist_ok=True)
    with data_path.database.write() as connection:
        for idx in range(chunk_count):
            connection.exec_driver_sql(
                "INSERT INTO chunks (ino, idx, state, version, leased, stored_bytes, last_access, pinned, "
                "object_key) VALUES (?, ?, 'remote', 1, 0, 0, 0, 0, 'key')", (inode.ino, idx))
    return inode


def test_a_read_outlasts_a_chunk_evicted_again_after_each_fault_in(data_path):
    """CI saw a read fail after five looks at a chunk the worker fetched and
    evicted again each time; a read keeps looking for as long as a fault-in may take."""
    data = os.urandom(1000)
    inode = evicted_file(data_path, data)
    data_path.worker = EvictingWorker(data_path, inode.ino, data, arrives_at=12, timeout_s=60)
    assert data_path.read(inode, 1000, 0) == data
    assert data_path.worker.waits == 12


def test_a_read_whose_chunk_never_stays_gives_up_after_the_fault_in_timeout_and_says_why(data_path):
    inode = evicted_file(data_path, b"x")
    data_path.worker = EvictingWorker(data_path, inode.ino, b"x", arrives_at=-1, timeout_s=0)
    with pytest.raises(data_module.ZeroError, match="raise targetDiskUsage"):
        data_path.read(inode, 1, 0)
    assert data_path.worker.waits == data_module.READ_ATTEMPTS


class PrefetchRecorder(EvictingWorker):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.asked = []

    def request_fetches(self, ino, indexes, priority):
        self.asked.append((ino, list(indexes), priority))


@pytest.mark.parametrize("target_chunks, prefetch, expected", [(64, 16, 16), (16, 16, 8), (8, 4, 4), (1, 4, 0)])
def test_prefetch_asks_for_at_most_half_the_cache(data_path, target_chunks, prefetch, expected):
    """prefetchChunks beyond half the cache made the worker evict chunks it had
    fetched ahead before the reader got to them, and fetch them again."""
    data = os.urandom(CHUNK)
    inode = evicted_file(data_path, data, chunk_count=40)
    data_path.config = dataclasses.replace(data_path.config, prefetch_chunks=prefetch,
                                           target_disk_usage_bytes=target_chunks * CHUNK)
    data_path.worker = PrefetchRecorder(data_path, inode.ino, data, arrives_at=1, timeout_s=60)
    assert data_path.read(inode, 4096, 0) == data[:4096]
    asked = [indexes for _, indexes, priority in data_path.worker.asked if priority == requests.PREFETCH]
    assert asked == ([list(range(1, 1 + expected))] if expected else [])


def test_the_prefetch_window_follows_the_settings_the_worker_published(data_path):
    """`zero reload` changes prefetchChunks and targetDiskUsage in the worker, which
    publishes them; zero-fuse, which asks for the prefetch, follows."""
    data = os.urandom(CHUNK)
    inode = evicted_file(data_path, data, chunk_count=40)
    data_path.config = dataclasses.replace(data_path.config, prefetch_chunks=4, target_disk_usage_bytes=64 * CHUNK)
    with data_path.database.write() as connection:
        db.set_meta(connection, "worker_status", json.dumps(
            {"settings": {"prefetchChunks": 12, "targetDiskUsage": 20 * CHUNK}}))
    data_path.worker = PrefetchRecorder(data_path, inode.ino, data, arrives_at=1, timeout_s=60)
    data_path.worker.worker_pid = lambda: 4321
    data_path.read(inode, 4096, 0)
    assert [indexes for _, indexes, _ in data_path.worker.asked] == [list(range(1, 11))]  # half of 20 chunks


def test_without_a_running_worker_the_prefetch_window_is_this_processs_own(data_path):
    """A stopped worker's heartbeat stays in the state; its settings are not the config's."""
    data = os.urandom(CHUNK)
    inode = evicted_file(data_path, data, chunk_count=40)
    data_path.config = dataclasses.replace(data_path.config, prefetch_chunks=3, target_disk_usage_bytes=64 * CHUNK)
    with data_path.database.write() as connection:
        db.set_meta(connection, "worker_status", json.dumps(
            {"stopped": True, "settings": {"prefetchChunks": 12, "targetDiskUsage": 20 * CHUNK}}))
    data_path.worker = PrefetchRecorder(data_path, inode.ino, data, arrives_at=1, timeout_s=60)
    data_path.read(inode, 4096, 0)
    assert [indexes for _, indexes, _ in data_path.worker.asked] == [[1, 2, 3]]


def test_a_new_file_truncated_before_its_first_write_can_go_idle(data_path):
    """A chunk leased in advance (Names.create) that a truncate drops is not
    unwritten any more: an inode that keeps one is never let go."""
    inode = new_file(data_path)
    with data_path.database.write() as connection:
        chunks.lease_new_chunk(connection, inode.ino, 0)
    inode.leases[0], inode.unwritten = time.monotonic(), {0}  # as Names.create
    data_path.truncate(inode, 100)
    data_path.truncate(inode, 0)
    assert not inode.leases and not inode.unwritten
    assert leased(data_path, inode.ino) == {}
    assert data_path.tree._idle(inode)
