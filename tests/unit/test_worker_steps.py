"""The worker's steps, driven by hand on a real SQLite file and a local-folder
remote: no threads, no FUSE. Chunks are made the way zero-fuse makes them
(take the lease, write the cache file, release the lease)."""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from zero.cachedir import CacheDir
from zero import fsutil
from zero.fsutil import disk_bytes
from zero import locking, wakeup
from zero.config import Config, RemoteSpec
from zero.errors import RemoteUnavailable
from zero.remote.local import LocalRemote
from zero.remote.pool import RemotePool
from zero.state import chunks, counters, db, namespace, objects, requests, restored, schema
from zero.state import pins as state_pins
from zero.state.schema import ChunkState
from zero.worker import pins
from zero.worker.collector import COLLECT_LOCK, Collector
from zero.worker import evictor as evictor_module
from zero.worker import unread as unread_module
from zero.worker.evictor import Evictor
from zero.worker import fetcher as fetcher_module
from zero.worker.fetcher import FetchDispatcher, Fetcher
from zero.wiring import build_context
from zero.worker.remotes import RemoteKeeper
from zero.worker.recovery import recover
from zero.worker.uploader import Uploader

CHUNK = 64 * 1024
HOUR_S = 3600.0


# --- building a worker context and chunks as zero-fuse would -----------------------------------


@pytest.fixture
def make_context(tmp_path):
    """Factory: a WorkerContext over a fresh cache, state and local remote,
    built by zero-worker's own build_context."""
    made = []

    def factory(target_bytes: int = 1 << 30, grace_s: float = HOUR_S, name: str = "fs"):
        root = tmp_path / name
        cache = CacheDir(root / "cache")
        cache.prepare()
        config = Config(source="test",
                        remotes=(RemoteSpec("local", "local", {"path": str(root / "remote")}),),
                        target_disk_usage_bytes=target_bytes, chunk_size_bytes=CHUNK, upload_delay_s=0,
                        gc_grace_period_s=grace_s)
        context = build_context(config, cache)
        made.append(context)
        RemoteKeeper(context).start()  # as zero-worker does: the remote gets its marker
        return context

    yield factory
    for context in made:
        context.database.dispose()


@pytest.fixture
def context(make_context):
    return make_context()


def remote_root(context) -> Path:
    return Path(context.pool.remotes[0].root)


def remote_file(context, key: str) -> Path:
    return remote_root(context) / context.remote_key(key)


def remote_object_keys(context) -> set[str]:
    folder = remote_root(context) / context.object_prefix
    return {path.name for path in folder.rglob("*") if path.is_file()} if folder.exists() else set()


def make_file(context, name: bytes, parent: int = namespace.ROOT_INO, directory: bool = False) -> int:
    mode = (stat.S_IFDIR | 0o755) if directory else (stat.S_IFREG | 0o644)
    with context.database.write() as connection:
        ino = namespace.insert_inode(connection, mode=mode, uid=0, gid=0, nlink=2 if directory else 1, size=0,
                                     atime_ns=0, mtime_ns=0, ctime_ns=0, rdev=0, target=None)
        namespace.insert_dentry(connection, parent, name, ino)
    return ino


def take_lease(context, ino: int, idx: int) -> None:
    with context.database.write() as connection:
        assert chunks.take_lease(connection, ino, idx) == chunks.Readiness.HERE


def write_file(context, ino: int, idx: int, data: bytes) -> None:
    path = context.cache.chunk_path(ino, idx)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as out:
        out.write(data)


def fuse_write(context, ino: int, idx: int, data: bytes) -> None:
    """What zero-fuse does for a write followed by close: lease, write, release."""
    take_lease(context, ino, idx)
    write_file(context, ino, idx, data)
    with context.database.write() as connection:
        chunks.release_leases(connection, ino, [idx])


def row_of(context, ino: int, idx: int):
    with context.database.read() as connection:
        return chunks.get(connection, ino, idx)


def state_of(context, ino: int, idx: int) -> ChunkState:
    return ChunkState(row_of(context, ino, idx).state)


def counter(context, name: str) -> int:
    with context.database.read() as connection:
        return counters.read_all(connection).get(name, 0)


def file_bytes(context, ino: int, idx: int) -> bytes | None:
    try:
        with open(context.cache.chunk_path(ino, idx), "rb") as chunk_file:
            return chunk_file.read()
    except FileNotFoundError:
        return None


def upload_all(context) -> None:
    uploader = Uploader(context)
    due = uploader.due(hurry=False)
    assert due, "nothing was due for upload"
    for row in due:
        assert uploader.upload(row) is True
    assert uploader.due(hurry=True) == []


def evict_all(context) -> None:
    Evictor(context).evict(goal_bytes=0)


def chunk_data(seed: int) -> bytes:
    """A chunk of incompressible bytes, different for each seed."""
    return os.urandom(CHUNK - 64) + seed.to_bytes(64, "big")


def evicted_file(context, name: bytes, count: int) -> tuple[int, list[bytes]]:
    """A file of ``count`` chunks, uploaded and evicted: every chunk only in the remote."""
    ino = make_file(context, name)
    data = [chunk_data(idx) for idx in range(count)]
    for idx, chunk in enumerate(data):
        fuse_write(context, ino, idx, chunk)
    upload_all(context)
    evict_all(context)
    return ino, data


def fetch_requests(context) -> dict[tuple[int, int], int]:
    with context.database.read() as connection:
        return {(row.ino, row.idx): row.priority for row in connection.execute(select(schema.fetch_requests))}


# --- upload ---------------------------------------------------------------------------------


def test_upload_makes_a_chunk_clean_and_stores_a_decodable_object(context):
    ino = make_file(context, b"a")
    data = chunk_data(1)
    fuse_write(context, ino, 0, data)
    uploader = Uploader(context)
    due = uploader.due(hurry=False)
    assert [(row.ino, row.idx) for row in due] == [(ino, 0)]

    assert uploader.upload(due[0]) is True

    row = row_of(context, ino, 0)
    assert row.state == ChunkState.CLEAN.value
    key = context.codec.object_key(data)
    assert row.object_key == key
    assert row.stored_bytes == disk_bytes(os.stat(context.cache.chunk_path(ino, 0)))
    blob = remote_file(context, key).read_bytes()
    assert blob != data  # sealed, not stored in the clear
    assert context.codec.open(blob, expected_key=key) == data
    with context.database.read() as connection:
        assert objects.remotes_holding(connection, key) == ["local"]
        assert objects.get(connection, key).stored_bytes == len(blob)
    assert counter(context, "uploads") == 1
    assert counter(context, "uploaded_bytes") == len(data)
    assert uploader.due(hurry=True) == []
    assert file_bytes(context, ino, 0) == data  # the upload leaves the cache file alone


def test_a_quiet_chunk_waits_for_the_upload_delay_unless_asked_for(make_context):
    context = make_context()
    context.config = dataclasses.replace(context.config, upload_delay_s=HOUR_S)
    quiet, asked = make_file(context, b"quiet"), make_file(context, b"asked")
    fuse_write(context, quiet, 0, chunk_data(1))
    fuse_write(context, asked, 0, chunk_data(2))
    uploader = Uploader(context)
    assert uploader.due(hurry=False) == []
    assert 0 < uploader.next_due_in() <= HOUR_S

    with context.database.write() as connection:
        requests.request_upload(connection, asked)  # fsync or zero sync
    due = uploader.due(hurry=False)
    assert [row.ino for row in due] == [asked]
    assert uploader.upload(due[0]) is True
    uploader.finish_requests()
    with context.database.read() as connection:
        assert requests.pending_uploads(connection) == []
    # A full cache hurries everything.
    assert [row.ino for row in uploader.due(hurry=True)] == [quiet]


def test_a_write_during_an_upload_leaves_the_chunk_dirty_and_its_object_garbage(make_context, monkeypatch):
    context = make_context(grace_s=0)
    ino = make_file(context, b"a")
    first, second = chunk_data(1), chunk_data(2)
    fuse_write(context, ino, 0, first)
    uploader = Uploader(context)
    [row] = uploader.due(hurry=False)
    put = context.pool.put

    def put_then_fuse_writes(key, blob, holders=()):
        holders = put(key, blob)
        assert state_of(context, ino, 0) == ChunkState.UPLOADING
        fuse_write(context, ino, 0, second)  # the lease moves uploading -> dirty, version + 1
        return holders

    monkeypatch.setattr(context.pool, "put", put_then_fuse_writes)
    assert uploader.upload(row) is False
    monkeypatch.undo()

    after = row_of(context, ino, 0)
    assert after.state == ChunkState.DIRTY.value
    assert after.version == row.version + 1
    assert after.object_key is None
    stale_key = context.codec.object_key(first)
    assert remote_object_keys(context) == {stale_key}  # sent, but nobody references it

    [again] = uploader.due(hurry=False)
    assert uploader.upload(again) is True
    fresh_key = context.codec.object_key(second)
    assert row_of(context, ino, 0).object_key == fresh_key
    assert context.codec.open(remote_file(context, fresh_key).read_bytes(), expected_key=fresh_key) == second

    Collector(context).collect()
    assert remote_object_keys(context) == {fresh_key}
    with context.database.read() as connection:
        assert objects.known_keys(connection) == {fresh_key}


def test_after_a_restart_recently_uploaded_chunk_files_are_read_back_from_the_remote(context, monkeypatch):
    # The uploader does not sync a chunk's file before marking it clean; a power cut can
    # leave a clean row over a file that lost its bytes (decision 73).
    from zero.meta import reboot
    from zero.worker.recovery import recover
    ino = make_file(context, b"a")
    data = [chunk_data(idx) for idx in range(4)]
    for idx in range(3):
        fuse_write(context, ino, idx, data[idx])
    upload_all(context)
    fuse_write(context, ino, 3, data[3])  # still dirty: its bytes are the user's to fsync
    with context.database.write() as connection:  # chunk 0 was written and uploaded an hour earlier
        connection.exec_driver_sql("UPDATE chunks SET last_access = last_access - 3600 WHERE ino = ? AND idx = 0",
                                   (ino,))
    with context.database.write() as connection:
        db.set_meta(connection, reboot.BOOT_ID_KEY, "boot-0")  # what the last start saw
    monkeypatch.setattr(reboot, "current_boot", lambda: "boot-1")
    recover(context)  # the first start on this boot: every clean file written lately is in doubt
    assert [state_of(context, ino, idx) for idx in range(4)] == [
        ChunkState.CLEAN, ChunkState.REMOTE, ChunkState.REMOTE, ChunkState.DIRTY]
    assert file_bytes(context, ino, 1) is None and file_bytes(context, ino, 0) == data[0]
    assert chunk_data_of(context, ino, 1) == data[1], "the remote copy that a read will fetch"

    Uploader(context).upload_batch(Uploader(context).due(hurry=True))
    recover(context)  # the same boot again: nothing is in doubt
    assert state_of(context, ino, 3) == ChunkState.CLEAN and file_bytes(context, ino, 3) == data[3]


def test_an_unexpected_error_in_a_group_sends_its_chunks_back_to_dirty(context):
    # Left uploading, nothing would retry them until the worker restarts: fsync and `zero sync` would wait.
    ino = make_file(context, b"a")
    fuse_write(context, ino, 0, chunk_data(1))
    fuse_write(context, ino, 1, chunk_data(2))

    def full_disk(_files):
        raise OSError(28, "No space left on device")

    uploader = Uploader(context, make_room=full_disk)
    with pytest.raises(OSError):
        uploader.upload_batch(uploader.due(hurry=False))
    assert state_of(context, ino, 0) == ChunkState.DIRTY and state_of(context, ino, 1) == ChunkState.DIRTY
    assert Uploader(context).upload_batch(Uploader(context).due(hurry=False)) == 2


def test_a_group_in_flight_that_fails_is_reaped_and_its_chunks_are_due_again(context):
    ino = make_file(context, b"a")
    fuse_write(context, ino, 0, chunk_data(1))
    failing = Uploader(context, make_room=lambda _files: 1 / 0)
    assert failing.submit(failing.due(hurry=False)) == 1
    failing.wait_in_flight()
    failing.close()
    assert state_of(context, ino, 0) == ChunkState.DIRTY
    assert [(row.ino, row.idx) for row in Uploader(context).due(hurry=True)] == [(ino, 0)]


def test_an_upload_of_a_chunk_fuse_took_back_does_not_start(context):
    ino = make_file(context, b"a")
    fuse_write(context, ino, 0, chunk_data(1))
    uploader = Uploader(context)
    [row] = uploader.due(hurry=False)
    fuse_write(context, ino, 0, chunk_data(2))  # between due() and upload(): the version moved on
    assert uploader.upload(row) is False
    assert state_of(context, ino, 0) == ChunkState.DIRTY
    assert remote_object_keys(context) == set()


def test_identical_chunks_upload_one_object(context):
    data = chunk_data(7)
    one, two = make_file(context, b"one"), make_file(context, b"two")
    fuse_write(context, one, 0, data)
    fuse_write(context, two, 3, data)
    upload_all(context)

    key = context.codec.object_key(data)
    assert row_of(context, one, 0).object_key == key
    assert row_of(context, two, 3).object_key == key
    assert state_of(context, one, 0) == state_of(context, two, 3) == ChunkState.CLEAN
    assert remote_object_keys(context) == {key}
    assert counter(context, "uploads") == 1
    assert counter(context, "dedup_hits") == 1


def test_a_leased_chunk_is_never_uploaded_or_evicted(make_context):
    context = make_context(target_bytes=CHUNK)
    ino = make_file(context, b"open")
    take_lease(context, ino, 0)  # a writer holds it: written, not closed
    write_file(context, ino, 0, chunk_data(1))
    uploader = Uploader(context)
    assert uploader.due(hurry=True) == []
    assert uploader.upload(row_of(context, ino, 0)) is False  # even when handed the row
    assert row_of(context, ino, 0).leased
    assert state_of(context, ino, 0) == ChunkState.DIRTY
    assert remote_object_keys(context) == set()

    evictor = Evictor(context)
    assert evictor.evict(goal_bytes=0) == 0
    assert file_bytes(context, ino, 0) is not None
    assert state_of(context, ino, 0) == ChunkState.DIRTY


def test_eviction_rechecks_the_chunk_in_its_own_transaction(context, monkeypatch):
    """A chunk fuse takes the lease of after the evictor listed it is left alone."""
    ino = make_file(context, b"a")
    data, written = chunk_data(1), chunk_data(2)
    fuse_write(context, ino, 0, data)
    upload_all(context)
    with context.database.read() as connection:
        stale = chunks.eviction_candidates(connection, 10)
    take_lease(context, ino, 0)
    write_file(context, ino, 0, written)
    listed = iter([stale])
    real = chunks.eviction_candidates
    monkeypatch.setattr(chunks, "eviction_candidates", lambda connection, limit, *durability: next(listed, None) or
                        real(connection, limit))

    assert Evictor(context).evict(goal_bytes=0) == 0
    assert state_of(context, ino, 0) == ChunkState.DIRTY
    assert file_bytes(context, ino, 0) == written


# --- eviction --------------------------------------------------------------------------------


def test_eviction_goes_least_recently_used_first_to_the_low_watermark(make_context):
    context = make_context()
    many, dirty, pinned = make_file(context, b"many"), make_file(context, b"dirty"), make_file(context, b"pinned")
    data = {idx: chunk_data(idx) for idx in range(6)}
    for idx, chunk in data.items():
        fuse_write(context, many, idx, chunk)
    fuse_write(context, pinned, 0, chunk_data(10))
    upload_all(context)
    fuse_write(context, dirty, 0, chunk_data(11))
    order = [3, 0, 5, 1, 4, 2]  # least recently used first
    with context.database.write() as connection:
        state_pins.set_pinned(connection, [pinned], True)
        # The dirty and the pinned chunk are the oldest of all: age alone never evicts them.
        accesses = {(dirty, 0): 1.0, (pinned, 0): 2.0}
        accesses.update({(many, idx): 10.0 + rank for rank, idx in enumerate(order)})
        chunks.record_access(connection, accesses)

    per_chunk = disk_bytes(os.stat(context.cache.chunk_path(many, 0)))
    assert context.cache.usage().total_bytes == 8 * per_chunk
    # Target 6 chunks: the low watermark (0.9) keeps 5, so 3 must go.
    context.config = dataclasses.replace(context.config, target_disk_usage_bytes=6 * per_chunk)
    evictor = Evictor(context)
    assert evictor.over_target()

    assert evictor.evict() == 3

    evicted = set(order[:3])
    for idx in range(6):
        row = row_of(context, many, idx)
        if idx in evicted:
            assert row.state == ChunkState.REMOTE.value
            assert row.stored_bytes == 0
            assert file_bytes(context, many, idx) is None
        else:
            assert row.state == ChunkState.CLEAN.value
            assert file_bytes(context, many, idx) == data[idx]
    assert state_of(context, dirty, 0) == ChunkState.DIRTY
    assert state_of(context, pinned, 0) == ChunkState.CLEAN
    assert file_bytes(context, pinned, 0) is not None
    assert context.cache.usage().total_bytes == 5 * per_chunk <= evictor.low_watermark
    assert not evictor.over_target()
    assert counter(context, "evictions") == 3


def test_eviction_stops_when_only_dirty_and_pinned_chunks_are_left(make_context):
    context = make_context(target_bytes=CHUNK)
    dirty, pinned = make_file(context, b"dirty"), make_file(context, b"pinned")
    fuse_write(context, pinned, 0, chunk_data(1))
    upload_all(context)
    fuse_write(context, dirty, 0, chunk_data(2))
    fuse_write(context, dirty, 1, chunk_data(3))
    with context.database.write() as connection:
        state_pins.set_pinned(connection, [pinned], True)
    evictor = Evictor(context)
    assert evictor.over_target()
    assert evictor.evict() == 0
    assert {state_of(context, dirty, 0), state_of(context, dirty, 1)} == {ChunkState.DIRTY}
    assert state_of(context, pinned, 0) == ChunkState.CLEAN
    assert context.cache.usage().files == 3


def test_the_worker_measures_the_cache_from_the_state_as_a_walk_of_it_would(make_context, monkeypatch):
    """Clean chunks count as their upload or fault-in recorded them, chunks not
    uploaded by their files: the same figure a walk of every chunk file gives,
    without the walk, which cost 0.83 s of CPU for 100,000 files (decision 111)."""
    context = make_context()
    evicted, _data = evicted_file(context, b"evicted", 2)
    fetcher = Fetcher(context)
    fetcher.fetch(evicted, 1)  # clean again by a fault-in
    clean = make_file(context, b"clean")
    for idx in range(3):
        fuse_write(context, clean, idx, chunk_data(20 + idx))
    upload_all(context)  # clean by an upload
    dirty = make_file(context, b"dirty")
    fuse_write(context, dirty, 0, chunk_data(30))
    take_lease(context, dirty, 1)
    write_file(context, dirty, 1, b"being written")  # leased, and growing as zero-fuse writes
    walked = context.cache.usage().total_bytes
    assert walked > 0
    monkeypatch.setattr(CacheDir, "iter_chunk_files", lambda self: pytest.fail("the worker walked the cache"))
    evictor = Evictor(context)
    assert evictor.measure() == walked
    write_file(context, dirty, 1, os.urandom(100_000))  # the leased file grows: looked at, not recorded
    monkeypatch.undo()
    assert evictor.measure() == context.cache.usage().total_bytes > walked


def test_a_clean_chunk_counts_at_least_its_size_where_its_blocks_are_counted_late(make_context, monkeypatch):
    """ZFS counts a write's blocks when its transaction group commits: read right after
    the write, st_blocks was a fraction of the file, the figure recorded for the clean
    chunk stayed that small, and the cache grew past its target with nothing evicted
    (a review of decision 111)."""
    context = make_context()
    monkeypatch.setattr(fsutil, "disk_bytes", lambda st: 512)  # as read right after the write
    ino = make_file(context, b"photos")
    for idx in range(8):
        fuse_write(context, ino, idx, chunk_data(idx))
    upload_all(context)
    monkeypatch.undo()
    per_chunk = disk_bytes(os.stat(context.cache.chunk_path(ino, 0)))
    context.config = dataclasses.replace(context.config, target_disk_usage_bytes=6 * per_chunk)
    evictor = Evictor(context)
    assert evictor.measure() == 8 * per_chunk
    assert evictor.evict() == 3


def test_evicting_a_sparse_chunk_frees_what_the_measure_counted_for_it(make_context):
    """A chunk file with a hole counts at its size (settled_bytes). Eviction took off
    what a stat said it freed, a few blocks, and went on evicting chunks the cache
    had room for."""
    context = make_context()
    ino = make_file(context, b"sparse")
    for idx in range(3):
        take_lease(context, ino, idx)
        path = context.cache.chunk_path(ino, idx)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, os.urandom(4096), 0)
            os.pwrite(fd, os.urandom(4096), CHUNK - 4096)  # a hole between
        finally:
            os.close(fd)
        with context.database.write() as connection:
            chunks.release_leases(connection, ino, [idx])
    upload_all(context)
    assert disk_bytes(os.stat(context.cache.chunk_path(ino, 0))) < CHUNK
    # Counted 3 x CHUNK; over a target of 2.5, the low watermark (0.9) keeps 2.25: one must go.
    context.config = dataclasses.replace(context.config, target_disk_usage_bytes=5 * CHUNK // 2)
    evictor = Evictor(context)
    assert evictor.measure() == 3 * CHUNK
    assert evictor.evict() == 1
    assert sorted(state_of(context, ino, idx) for idx in range(3)) == \
        sorted([ChunkState.CLEAN, ChunkState.CLEAN, ChunkState.REMOTE])


def test_priming_waits_while_writes_pile_up(make_context, monkeypatch):
    """Measuring reads the file of every chunk not uploaded, inside priming's write
    transaction; with a backlog that large, bringing old data back can wait."""
    context = make_context()
    evicted_file(context, b"old", 1)
    ino = make_file(context, b"new")
    for idx in range(3):
        fuse_write(context, ino, idx, chunk_data(10 + idx))
    monkeypatch.setattr(pins, "PRIME_BACKLOG_LIMIT", 2)
    assert pins.prime(context) == 0 and fetch_requests(context) == {}
    monkeypatch.setattr(pins, "PRIME_BACKLOG_LIMIT", 3)
    assert pins.prime(context) == 1


# --- fault-in ---------------------------------------------------------------------------------


def test_fetch_brings_an_evicted_chunk_back_byte_identical(context):
    ino = make_file(context, b"a")
    data = chunk_data(1)
    fuse_write(context, ino, 2, data)
    upload_all(context)
    evict_all(context)
    assert state_of(context, ino, 2) == ChunkState.REMOTE
    assert file_bytes(context, ino, 2) is None

    with context.database.write() as connection:
        requests.request_fetch(connection, ino, 2, requests.READER)
    fetcher = Fetcher(context)
    assert [(row.ino, row.idx) for row in fetcher.pending()] == [(ino, 2)]
    fetcher.fetch(ino, 2)

    assert file_bytes(context, ino, 2) == data
    row = row_of(context, ino, 2)
    assert row.state == ChunkState.CLEAN.value
    assert row.stored_bytes == disk_bytes(os.stat(context.cache.chunk_path(ino, 2)))
    assert fetcher.pending() == []
    assert os.listdir(context.cache.tmp) == []
    assert counter(context, "fault_ins") == 1
    # Clean again: it can be evicted and fetched once more.
    evict_all(context)
    assert state_of(context, ino, 2) == ChunkState.REMOTE


def test_fetch_of_a_chunk_that_is_local_or_gone_just_drops_the_request(context):
    ino = make_file(context, b"a")
    fuse_write(context, ino, 0, chunk_data(1))
    with context.database.write() as connection:
        requests.request_fetch(connection, ino, 0, requests.PREFETCH)
        requests.request_fetch(connection, ino, 9, requests.PREFETCH)
    fetcher = Fetcher(context)
    fetcher.fetch(ino, 0)
    fetcher.fetch(ino, 9)
    assert fetcher.pending() == []
    assert state_of(context, ino, 0) == ChunkState.DIRTY


def _flip_a_byte(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-1])


def test_a_fetch_whose_commit_fails_after_the_rename_leaves_no_file_behind(context, monkeypatch):
    """The file is renamed into place inside the transaction that marks the chunk
    clean; when that commit fails (a full disk), the chunk is remote again and its
    file must go too, or the cache holds bytes its measure does not count."""
    ino, _data = evicted_file(context, b"film", 1)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "database or disk is full")

    monkeypatch.setattr(fetcher_module.counters, "bump", disk_full)  # the last statement before the commit
    with pytest.raises(OSError):
        Fetcher(context).fetch(ino, 0)
    assert state_of(context, ino, 0) == ChunkState.REMOTE
    assert file_bytes(context, ino, 0) is None
    assert not os.listdir(context.cache.tmp)


@pytest.mark.parametrize("damage", [_flip_a_byte, _truncate, Path.unlink], ids=["flipped", "truncated", "missing"])
def test_fetch_of_a_damaged_or_missing_object_records_an_error(context, damage, caplog):
    ino = make_file(context, b"a")
    data = chunk_data(1)
    fuse_write(context, ino, 0, data)
    upload_all(context)
    evict_all(context)
    damage(remote_file(context, context.codec.object_key(data)))
    with context.database.write() as connection:
        requests.request_fetch(connection, ino, 0, requests.READER)

    Fetcher(context).fetch(ino, 0)

    with context.database.read() as connection:
        error = requests.fetch_error(connection, ino, 0)
    assert error  # the waiting reader gets EIO with this reason
    assert "cannot be read back" in caplog.text
    assert state_of(context, ino, 0) == ChunkState.REMOTE
    assert file_bytes(context, ino, 0) is None
    assert os.listdir(context.cache.tmp) == []
    assert Fetcher(context).pending() == []  # failed requests are not retried by themselves
    # Asking again clears the error and retries.
    with context.database.write() as connection:
        requests.request_fetch(connection, ino, 0, requests.READER)
        assert requests.fetch_error(connection, ino, 0) is None


def test_a_restored_chunk_that_was_never_uploaded_fails_its_read_and_is_never_primed(context, caplog):
    """Backed up before its upload, then the machine was lost: the chunk names no object.
    A fetch tells the reader why (EIO), without a download; priming does not ask for it."""
    ino = make_file(context, b"tail.raw")
    with context.database.write() as connection:
        restored.insert_chunks(connection, [(ino, 0, None)])
        requests.request_fetch(connection, ino, 0, requests.READER)
    with caplog.at_level(logging.ERROR):
        Fetcher(context).fetch(ino, 0, requests.READER)
    assert state_of(context, ino, 0) == ChunkState.REMOTE
    with context.database.read() as connection:
        assert requests.fetch_error(connection, ino, 0) == fetcher_module.NEVER_UPLOADED
        assert restored.never_uploaded(connection) == (1, 1)
    assert "tail.raw (inode" in caplog.text and "not uploaded before that machine was lost" in caplog.text
    with context.database.write() as connection:
        requests.done_fetch(connection, ino, 0)
    assert pins.prime(context, usage_bytes=0) == 0, "priming asked for a chunk nothing can bring back"


def test_a_fetch_from_an_unreachable_remote_is_postponed(context, tmp_path):
    ino = make_file(context, b"a")
    data = chunk_data(1)
    fuse_write(context, ino, 0, data)
    upload_all(context)
    evict_all(context)
    with context.database.write() as connection:
        requests.request_fetch(connection, ino, 0, requests.READER)
    reachable = context.pool
    context.pool = RemotePool([LocalRemote("local", _path_under_a_file(tmp_path))], 1)

    with pytest.raises(RemoteUnavailable):
        Fetcher(context).fetch(ino, 0)
    assert state_of(context, ino, 0) == ChunkState.REMOTE
    with context.database.read() as connection:
        assert requests.fetch_error(connection, ino, 0) is None  # not the reader's failure yet

    context.pool = reachable
    Fetcher(context).fetch(ino, 0)
    assert file_bytes(context, ino, 0) == data


def test_a_missing_object_on_a_remote_that_lost_its_marker_is_postponed_not_reported_lost(context, caplog):
    """An unmounted drive leaves an empty folder: the object looks missing, but the
    remote is away, so the reader waits for it instead of being told the bytes are gone."""
    ino = make_file(context, b"a")
    data = chunk_data(1)
    fuse_write(context, ino, 0, data)
    upload_all(context)
    evict_all(context)
    moved = remote_file(context, context.codec.object_key(data))
    away = moved.with_name(moved.name + ".away")
    moved.rename(away)
    with context.database.write() as connection:
        requests.request_fetch(connection, ino, 0, requests.READER)

    with pytest.raises(RemoteUnavailable, match="unavailable"):
        Fetcher(context, still_ours=lambda names: set()).fetch(ino, 0)
    assert "cannot be read back" not in caplog.text
    with context.database.read() as connection:
        assert requests.fetch_error(connection, ino, 0) is None
    assert state_of(context, ino, 0) == ChunkState.REMOTE

    away.rename(moved)
    Fetcher(context).fetch(ino, 0)
    assert file_bytes(context, ino, 0) == data


def _path_under_a_file(tmp_path: Path) -> Path:
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    return blocker / "remote"


def test_upload_to_an_unreachable_remote_gives_the_chunk_back(context, tmp_path, caplog):
    ino = make_file(context, b"a")
    data = chunk_data(1)
    fuse_write(context, ino, 0, data)
    reachable = context.pool
    context.pool = RemotePool([LocalRemote("local", _path_under_a_file(tmp_path))], 1)
    uploader = Uploader(context)
    [row] = uploader.due(hurry=False)

    with pytest.raises(RemoteUnavailable):
        uploader.upload(row)
    after = row_of(context, ino, 0)
    assert after.state == ChunkState.DIRTY.value
    assert after.version == row.version
    assert after.object_key is None
    assert context.pool.health("local") == "unhealthy"  # said once by the pool, not once per chunk

    context.pool = reachable
    [again] = uploader.due(hurry=False)
    assert uploader.upload(again) is True
    assert state_of(context, ino, 0) == ChunkState.CLEAN


# --- garbage collection ------------------------------------------------------------------------


def _orphan(context, data: bytes, age_s: float) -> str:
    """An object in the remote the state has no row for (a collector killed after its commit)."""
    key = context.codec.object_key(data)
    context.pool.remotes[0].put(context.remote_key(key), context.codec.seal(data))
    stamp = time.time() - age_s
    os.utime(remote_file(context, key), (stamp, stamp))
    return key


def test_collect_deletes_unreferenced_and_never_referenced_objects(make_context):
    context = make_context(grace_s=0)
    kept, deleted = make_file(context, b"kept"), make_file(context, b"deleted")
    kept_data, deleted_data, intent_data = chunk_data(1), chunk_data(2), chunk_data(3)
    fuse_write(context, kept, 0, kept_data)
    fuse_write(context, deleted, 0, deleted_data)
    upload_all(context)
    # An upload killed after sending: a row with no reference, its object in the remote.
    intent_key = context.codec.object_key(intent_data)
    with context.database.write() as connection:
        objects.record_intent(connection, intent_key, len(intent_data))
    context.pool.put(context.remote_key(intent_key), context.codec.seal(intent_data))
    # An upload killed before sending: a row and nothing remote.
    with context.database.write() as connection:
        objects.record_intent(connection, "0" * 64, 1)
    with context.database.write() as connection:
        namespace.delete_dentry(connection, namespace.ROOT_INO, b"deleted")
        namespace.delete_inode(connection, deleted)
    kept_key, deleted_key = context.codec.object_key(kept_data), context.codec.object_key(deleted_data)
    assert remote_object_keys(context) == {kept_key, deleted_key, intent_key}

    Collector(context).collect()

    assert remote_object_keys(context) == {kept_key}
    with context.database.read() as connection:
        assert objects.known_keys(connection) == {kept_key}
        assert objects.remotes_holding(connection, deleted_key) == []
    assert counter(context, "objects_collected") == 3


def upload_due_and_check_its_copy(context, ino: int) -> None:
    """Upload what is due, then: the chunk is clean and its object is in the remote."""
    uploader = Uploader(context)
    for row in uploader.due(hurry=True):
        uploader.upload(row)
    row = row_of(context, ino, 0)
    assert row.state == ChunkState.CLEAN.value
    assert remote_file(context, row.object_key).exists(), "the clean chunk's only copy was collected"


def test_a_collection_during_an_upload_leaves_the_upload_its_copy(make_context, monkeypatch):
    """gc with grace 0 while a group was in flight took the upload's placeholder
    row (no chunk names an object until the upload finishes), then swept the
    copy that had landed as an orphan; the upload's last commit put the row
    back and marked the chunk clean: an fsynced file with no copy anywhere
    (a red-team pass, 3 of 3). A collection waits while uploads are under way."""
    monkeypatch.setattr(objects, "COLLECTION_WAIT_S", 0.5)  # the upload it waits for is on its own thread here
    context = make_context(grace_s=0)
    ino = make_file(context, b"a")
    fuse_write(context, ino, 0, chunk_data(1))
    uploader = Uploader(context)
    send = uploader._send

    def send_then_collect(item):
        outcome = send(item)
        Collector(context).collect()  # `zero gc --delete --grace 0`, between the put and the last commit
        return outcome

    uploader._send = send_then_collect
    for row in uploader.due(hurry=False):
        assert uploader.upload(row)
    row = row_of(context, ino, 0)
    assert row.state == ChunkState.CLEAN.value
    assert remote_file(context, row.object_key).exists(), "the clean chunk's only copy was collected"


def test_an_upload_waits_while_a_collection_deletes_its_object(make_context, monkeypatch):
    """gc claimed an unused object and, before it deleted the copy, a new file with
    the same bytes was uploaded: the uploader found no row, stored the object
    again under the same key and marked the chunk clean; then gc deleted that
    copy (a red-team pass). Uploads now wait while a collection deletes."""
    context = make_context(grace_s=0)
    data = chunk_data(1)
    old = make_file(context, b"old")
    fuse_write(context, old, 0, data)
    upload_all(context)
    with context.database.write() as connection:  # the file is gone: its object is unused
        chunks.drop_from(connection, old, 0)
    new = make_file(context, b"new")
    delete = context.pool.delete

    def upload_before_the_delete(key, holders):
        fuse_write(context, new, 0, data)
        uploader = Uploader(context)
        for row in uploader.due(hurry=True):
            try:
                uploader.upload(row)
            except RemoteUnavailable:
                pass  # told to wait: the chunk stays dirty for a later round
        return delete(key, holders)

    monkeypatch.setattr(context.pool, "delete", upload_before_the_delete)
    assert Collector(context).collect() == 1
    monkeypatch.setattr(context.pool, "delete", delete)
    upload_due_and_check_its_copy(context, new)


def test_a_steady_writer_does_not_put_a_collection_off_for_good(make_context):
    """A collection begins only while no chunk is uploading, and a steady writer
    always has one: it was put off round after round (decision 88's known gap).
    Now it asks new upload groups to wait, the group in flight finishes, and it
    begins; the asked-off group goes up after it."""
    context = make_context(grace_s=0)
    data = chunk_data(1)
    gone = make_file(context, b"gone")
    fuse_write(context, gone, 0, data)
    upload_all(context)
    with context.database.write() as connection:
        namespace.delete_inode(connection, gone)
    steady, later = make_file(context, b"steady"), make_file(context, b"later")
    fuse_write(context, steady, 0, chunk_data(2))
    in_flight, asked_off = Uploader(context), Uploader(context)
    send, outcome = in_flight._send, {}

    def send_until_asked(item):
        wait_for(lambda: _collection_asked(context), "the collection to ask uploads to wait")
        fuse_write(context, later, 0, chunk_data(3))
        try:
            for row in asked_off.due(hurry=True):
                asked_off.upload(row)
        except RemoteUnavailable as error:
            outcome["asked off"] = error
        return send(item)

    in_flight._send = send_until_asked
    group = threading.Thread(target=lambda: [in_flight.upload(row) for row in in_flight.due(hurry=True)])
    group.start()
    wait_for(lambda: row_of(context, steady, 0).state == ChunkState.UPLOADING.value, "the steady writer's upload")
    assert Collector(context).collect() == 1
    group.join(timeout=30)
    assert "wait" in str(outcome.get("asked off")), outcome
    assert context.codec.object_key(data) not in remote_object_keys(context)
    upload_due_and_check_its_copy(context, later)


def _collection_asked(context) -> bool:
    with context.database.read() as connection:
        return connection.exec_driver_sql("SELECT 1 FROM meta WHERE key = ?",
                                          (objects.COLLECTION_WANTED_KEY,)).first() is not None


def wait_for(predicate, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_collect_waits_out_the_grace_period(context):
    ino = make_file(context, b"a")
    data = chunk_data(1)
    fuse_write(context, ino, 0, data)
    upload_all(context)
    key = context.codec.object_key(data)
    with context.database.write() as connection:
        namespace.delete_inode(connection, ino)
    collector = Collector(context)
    now = time.time()
    assert collector.collect(now=now) == 0  # stamped unreferenced, not old enough
    assert collector.collect(now=now + HOUR_S / 2) == 0
    assert remote_object_keys(context) == {key}
    assert collector.collect(now=now + HOUR_S + 1) == 1
    assert remote_object_keys(context) == set()


def test_an_object_referenced_again_within_the_grace_period_is_kept(context):
    one, two = make_file(context, b"one"), make_file(context, b"two")
    data = chunk_data(1)
    fuse_write(context, one, 0, data)
    upload_all(context)
    with context.database.write() as connection:
        namespace.delete_inode(connection, one)
    collector = Collector(context)
    now = time.time()
    collector.collect(now=now)
    fuse_write(context, two, 0, data)  # same bytes again: a dedup hit revives the object
    upload_all(context)
    assert counter(context, "dedup_hits") == 1
    assert collector.collect(now=now + 2 * HOUR_S) == 0
    key = context.codec.object_key(data)
    assert remote_object_keys(context) == {key}
    with context.database.read() as connection:
        assert objects.get(connection, key).unreferenced_since is None


def test_the_orphan_sweep_deletes_only_orphans_older_than_the_grace(context):
    ino = make_file(context, b"a")
    data = chunk_data(1)
    fuse_write(context, ino, 0, data)
    upload_all(context)
    known = context.codec.object_key(data)
    os.utime(remote_file(context, known), (1.0, 1.0))  # old, but the state knows it
    old = _orphan(context, chunk_data(2), age_s=2 * HOUR_S)
    fresh = _orphan(context, chunk_data(3), age_s=0)
    # Something else in the bucket (another filesystem's objects) is never touched.
    foreign = remote_root(context) / "another-fs" / "objects" / "ab" / "abcd"
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"not ours")
    os.utime(foreign, (1.0, 1.0))

    assert Collector(context).collect() == 1

    assert remote_object_keys(context) == {known, fresh}
    assert not remote_file(context, old).exists()
    assert foreign.exists()


# --- worker recovery -----------------------------------------------------------------------------


def test_recover_repairs_what_a_killed_worker_leaves(context, caplog):
    caplog.set_level(logging.INFO, logger="zero.worker.recovery")
    ino = make_file(context, b"a")
    data = {idx: chunk_data(idx) for idx in range(5)}
    for idx in (1, 2, 3, 4):
        fuse_write(context, ino, idx, data[idx])
    upload_all(context)
    fuse_write(context, ino, 0, data[0])
    with context.database.write() as connection:
        # 0: killed mid-upload.
        chunks.start_upload(connection, ino, 0, chunks.get(connection, ino, 0).version)
        # 1: killed mid-fetch, with its temporary file written.
    evict_all(context)
    with context.database.write() as connection:
        chunks.start_fetch(connection, ino, 1)
    tmp = Path(context.cache.tmp) / f"{ino}-1.fetch"
    tmp.write_bytes(data[1])
    # 2: fetched and renamed into place, but the commit never happened.
    with context.database.write() as connection:
        chunks.start_fetch(connection, ino, 2)
    write_file(context, ino, 2, data[2])
    with context.database.write() as connection:
        # 3: killed after unlinking an evicted file, before the commit: the row says clean.
        chunks.start_fetch(connection, ino, 3)
        chunks.finish_fetch(connection, ino, 3, CHUNK, time.time())
        # 4: fetched back completely: clean with its file, left alone.
        chunks.start_fetch(connection, ino, 4)
        chunks.finish_fetch(connection, ino, 4, CHUNK, time.time())
    write_file(context, ino, 4, data[4])

    repaired = recover(context)

    assert repaired == {"uploading": 1, "fetching": 2, "temp_files": 1, "evictions": 1, "stray_files": 1}
    assert "Recovered from an unclean stop" in caplog.text
    assert state_of(context, ino, 0) == ChunkState.DIRTY
    assert file_bytes(context, ino, 0) == data[0]
    for idx in (1, 2, 3):
        assert state_of(context, ino, idx) == ChunkState.REMOTE
        assert file_bytes(context, ino, idx) is None
    assert state_of(context, ino, 4) == ChunkState.CLEAN
    assert file_bytes(context, ino, 4) == data[4]
    assert os.listdir(context.cache.tmp) == []

    # Everything repaired moves on again.
    upload_all(context)
    fetcher = Fetcher(context)
    for idx in (1, 2, 3):
        with context.database.write() as connection:
            requests.request_fetch(connection, ino, idx, requests.READER)
        fetcher.fetch(ino, idx)
        assert file_bytes(context, ino, idx) == data[idx]
    assert recover(context) == dict.fromkeys(repaired, 0)


# --- pins and priming ----------------------------------------------------------------------------


def test_apply_pins_marks_a_pinned_tree_and_asks_for_its_remote_chunks(context):
    tree = make_file(context, b"tree", directory=True)
    inside = make_file(context, b"inside", parent=tree)
    sub = make_file(context, b"sub", parent=tree, directory=True)
    deep = make_file(context, b"deep", parent=sub)
    outside = make_file(context, b"outside")
    for ino in (inside, deep, outside):
        fuse_write(context, ino, 0, chunk_data(ino))
        fuse_write(context, ino, 1, chunk_data(100 + ino))
    upload_all(context)
    evict_all(context)
    fetcher = Fetcher(context)
    for ino in (inside, outside):  # chunk 0 of these is local again
        with context.database.write() as connection:
            requests.request_fetch(connection, ino, 0, requests.READER)
        fetcher.fetch(ino, 0)
    with context.database.write() as connection:
        state_pins.set_pinned(connection, [outside], True)  # pinned once, since unpinned
        connection.execute(schema.pins.insert().values(ino=tree, pinned_at=time.time()))

    assert pins.apply_pins(context) == 3

    with context.database.read() as connection:
        pinned = {(row.ino, row.idx) for row in chunks.all_rows(connection) if row.pinned}
    assert pinned == {(inside, 0), (inside, 1), (deep, 0), (deep, 1)}
    assert fetch_requests(context) == {(inside, 1): requests.PIN, (deep, 0): requests.PIN,
                                       (deep, 1): requests.PIN}
    for row in fetcher.pending():
        fetcher.fetch(row.ino, row.idx)
    assert pins.apply_pins(context) == 0
    assert Evictor(context).evict(goal_bytes=0) == 1  # only the unpinned local chunk
    assert file_bytes(context, outside, 0) is None
    for ino in (inside, deep):
        assert file_bytes(context, ino, 0) == chunk_data_of(context, ino, 0)
        assert state_of(context, ino, 1) == ChunkState.CLEAN


def chunk_data_of(context, ino: int, idx: int) -> bytes:
    key = row_of(context, ino, idx).object_key
    return context.codec.open(remote_file(context, key).read_bytes(), expected_key=key)


def test_prime_queues_recently_evicted_chunks_while_there_is_room(make_context):
    context = make_context(target_bytes=4 * CHUNK)  # low watermark: 3.6 chunks
    ino, _data = evicted_file(context, b"a", 5)
    with context.database.write() as connection:
        chunks.record_access(connection, {(ino, idx): 100.0 + idx for idx in range(5)})

    assert pins.prime(context, usage_bytes=int(3.5 * CHUNK)) == 0  # no room for a chunk
    assert fetch_requests(context) == {}

    assert pins.prime(context, usage_bytes=0) == 3

    assert fetch_requests(context) == {(ino, 4): requests.PRIME, (ino, 3): requests.PRIME,
                                       (ino, 2): requests.PRIME}
    fetcher = Fetcher(context)
    for row in fetcher.pending():
        fetcher.fetch(row.ino, row.idx)
    assert context.cache.usage().total_bytes <= Evictor(context).low_watermark
    assert [state_of(context, ino, idx) for idx in range(5)] == [ChunkState.REMOTE] * 2 + [ChunkState.CLEAN] * 3


def test_prime_counts_a_small_file_by_what_it_takes(make_context):
    """Priming counted every fetch as a whole chunk, as the fetch dispatcher did
    before decision 82: after a tree of small files was evicted, a cache with
    room for dozens of them brought back three a round."""
    context = make_context(target_bytes=4 * CHUNK)  # low watermark: 3.6 chunks of 64 KiB, 57 files of 4 KiB
    small = [make_file(context, f"s{number}".encode()) for number in range(20)]
    for number, ino in enumerate(small):
        fuse_write(context, ino, 0, os.urandom(4000) + number.to_bytes(4, "big"))
    upload_all(context)
    evict_all(context)

    assert pins.prime(context, usage_bytes=0) == pins.PRIME_BATCH
    assert len(fetch_requests(context)) == pins.PRIME_BATCH
    assert pins.prime(context, usage_bytes=int(3.6 * CHUNK) - 4096) == 0, "a round must count what is queued"


def primed_at_100(context, name: bytes) -> int:
    """A one-chunk file, evicted, last used at unix time 100, which priming asked for; its inode."""
    ino, _data = evicted_file(context, name, 1)
    with context.database.write() as connection:
        chunks.record_access(connection, {(ino, 0): 100.0})
    assert pins.prime(context, usage_bytes=0) == 1
    return ino


def test_a_primed_chunk_keeps_its_last_use_and_goes_before_chunks_used_since(make_context):
    """Priming stamped what it brought back as used at that moment: during a big
    write, a chunk of an older file came back, then outlived the newer chunks
    evicted after it (CI, test_when_the_cache_has_room_again_recently_used_evicted_chunks_come_back:
    one chunk stayed clean). A guess is not a use: it keeps the stamp of its last use."""
    context = make_context()
    old = primed_at_100(context, b"old")
    fetcher = Fetcher(context)
    for row in fetcher.pending():
        fetcher.fetch(row.ino, row.idx, row.priority)
    assert state_of(context, old, 0) == ChunkState.CLEAN
    assert row_of(context, old, 0).last_access == 100.0, "priming counted its guess as a use"

    newer = make_file(context, b"newer")
    fuse_write(context, newer, 0, chunk_data(1))
    upload_all(context)
    per_chunk = disk_bytes(os.stat(context.cache.chunk_path(old, 0)))
    assert Evictor(context).evict(goal_bytes=per_chunk) == 1
    assert (state_of(context, old, 0), state_of(context, newer, 0)) == (ChunkState.REMOTE, ChunkState.CLEAN)


def test_a_reader_asking_during_a_primed_fetch_gets_it_stamped_as_a_use(make_context, monkeypatch):
    """A reader asked for a chunk priming was already fetching: it came in with its
    old stamp and no protection as unread, the next to be evicted before the reader
    read it (a review of decision 109)."""
    context = make_context()
    ino = primed_at_100(context, b"wanted")
    fetcher = Fetcher(context)
    real_open = context.codec.open

    def reader_asks_meanwhile(blob, **kwargs):
        with context.database.write() as connection:
            requests.request_fetch(connection, ino, 0, requests.READER)
        return real_open(blob, **kwargs)
    monkeypatch.setattr(context.codec, "open", reader_asks_meanwhile)
    fetcher.fetch(ino, 0, requests.PRIME)
    assert state_of(context, ino, 0) == ChunkState.CLEAN
    assert row_of(context, ino, 0).last_access > 100.0, "the reader's chunk kept the guess's old stamp"


def test_a_warmup_fetch_counts_as_a_use(make_context):
    """`zero warmup` asks for a tree to be used soon: kept with the stamp of its last
    use, its first chunks were the next to go while its later ones came in (CI,
    test_warmup_wait_brings_an_evicted_tree_into_the_cache_and_reads_need_no_fetch)."""
    context = make_context()
    ino, _data = evicted_file(context, b"warm", 1)
    with context.database.write() as connection:
        chunks.record_access(connection, {(ino, 0): 100.0})
        requests.request_fetch(connection, ino, 0, requests.WARMUP)
    Fetcher(context).fetch(ino, 0, requests.WARMUP)
    assert row_of(context, ino, 0).last_access > 100.0


def test_a_reader_outranks_priming(context):
    ino = make_file(context, b"a")
    for idx in range(2):
        fuse_write(context, ino, idx, chunk_data(idx))
    upload_all(context)
    evict_all(context)
    assert pins.prime(context, usage_bytes=0) == 2
    with context.database.write() as connection:
        requests.request_fetch(connection, ino, 0, requests.READER)
    assert [(row.ino, row.idx, row.priority) for row in Fetcher(context).pending()] == [
        (ino, 0, requests.READER), (ino, 1, requests.PRIME)]


def run_fault_ins(context, tmp_path) -> None:
    """The worker's fetch dispatcher, with its evictor, until every request is served."""
    fetcher, evictor = Fetcher(context), Evictor(context)
    dispatcher = FetchDispatcher(fetcher, evictor.make_room)
    listener = wakeup.WakeListener(tmp_path, wakeup.WORKER)
    stopping = threading.Event()
    thread = threading.Thread(target=dispatcher.run, args=(stopping, listener, 0.05, 0.05), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while fetch_requests(context) and time.monotonic() < deadline:
            dispatcher.wanted.wait(0.05)
    finally:
        stopping.set()
        dispatcher.wanted.set()
        thread.join(30)
    assert fetch_requests(context) == {}, "the fault-ins did not finish"


@pytest.mark.parametrize("object_bytes, evicts", [(4096 + 4, False), (CHUNK, True)])
def test_fault_ins_make_room_for_what_they_bring(make_context, monkeypatch, tmp_path, object_bytes, evicts):
    """A diff of a tree of small files through a small cache faulted each file in,
    counted it as a whole chunk, and evicted the cache down to nothing, the chunk a
    reader had just waited for included; after five such rounds the read failed
    (CI, test_rsync_of_a_tree_bigger_than_the_cache_reads_back_identical). Whole
    chunks must still make room."""
    monkeypatch.setattr(evictor_module, "MEASURE_EVERY_S", HOUR_S)  # the running estimate alone decides
    context = make_context(target_bytes=16 * CHUNK)
    big = make_file(context, b"big")
    data = [chunk_data(idx) for idx in range(8)]
    for idx, chunk in enumerate(data):
        fuse_write(context, big, idx, chunk)
    fetched = [make_file(context, f"s{number}".encode()) for number in range(12)]
    for number, ino in enumerate(fetched):
        fuse_write(context, ino, 0, os.urandom(object_bytes - 4) + number.to_bytes(4, "big"))
    upload_all(context)
    with context.database.write() as connection:
        for ino in fetched:
            chunks.mark_evicted(connection, ino, 0)
            os.unlink(context.cache.chunk_path(ino, 0))
            requests.request_fetch(connection, ino, 0, requests.READER)

    # 8 whole chunks and 12 small ones fit well under 16 chunks; 8 and 12 whole ones do not.
    run_fault_ins(context, tmp_path)
    assert {state_of(context, ino, 0) for ino in fetched} == {ChunkState.CLEAN}
    if evicts:
        assert counter(context, "evictions") >= 4, "whole chunks were fetched without making room for them"
        assert context.cache.usage().total_bytes <= 16 * CHUNK
    else:
        assert counter(context, "evictions") == 0, \
            f"{counter(context, 'evictions')} chunk(s) evicted to make room that was there"
        assert [file_bytes(context, big, idx) for idx in range(8)] == data


def test_an_upload_makes_room_only_for_chunk_files_the_last_walk_did_not_count(make_context, monkeypatch):
    """Dirty chunk files are in the cache's usage already: an upload turning them
    clean needs room only for what the estimate's walk missed. Counting them
    again evicted a group's worth too much each time, and priming fetched it
    back while a big write went on (decision 103)."""
    context = make_context(target_bytes=8 * CHUNK + CHUNK // 2)
    evictor = Evictor(context)
    old = make_file(context, b"old")
    for idx in range(6):
        fuse_write(context, old, idx, chunk_data(idx))
    upload_all(context)
    new = make_file(context, b"new")
    for idx in range(2):
        fuse_write(context, new, idx, chunk_data(10 + idx))
        long_ago = time.time() - 60
        os.utime(context.cache.chunk_path(new, idx), (long_ago, long_ago))  # written before any walk
    uploader = Uploader(context, make_room=evictor.make_room_for_clean)
    assert uploader.upload_batch(uploader.due(hurry=False)) == 2
    states = [state_of(context, old, idx) for idx in range(6)] + [state_of(context, new, idx) for idx in range(2)]
    assert states == [ChunkState.CLEAN] * 8, "8 chunks under a target of 8.5 had some evicted"

    # A ninth, written after that walk: now the cache would be over its target. (However slow
    # the machine, this group uses the estimate, as one within a second of the walk does.)
    monkeypatch.setattr(evictor_module, "MEASURE_EVERY_S", HOUR_S)
    fuse_write(context, new, 2, chunk_data(12))
    assert uploader.upload_batch(uploader.due(hurry=False)) == 1
    evicted = [idx for idx in range(6) if state_of(context, old, idx) == ChunkState.REMOTE]
    assert evicted == [0], f"expected the least recently used chunk to go, went: {evicted}"


def test_chunks_fetched_ahead_outlast_chunks_read_since(make_context, tmp_path):
    """A film streamed through a small cache: the reader's read-ahead brought chunks
    3-5 in, then it read 0-2, which stamped them later than 3-5 were fetched. Plain
    least-recently-used evicted 3-5 before they were read, and the worker fetched
    them again (284-297 fault-ins for the 256 chunks of 1 GiB, bench/quick.py cold
    --cache-mib 32 --size-mib 1024). What was read goes first; what was fetched for a reader and
    not read yet goes last."""
    context = make_context()
    ino, data = evicted_file(context, b"film", 6)
    with context.database.write() as connection:
        requests.request_fetch(connection, ino, 0, requests.READER)
        for idx in range(1, 6):
            requests.request_fetch(connection, ino, idx, requests.PREFETCH)
    run_fault_ins(context, tmp_path)
    fetched_at = max(row_of(context, ino, idx).last_access for idx in range(6))
    with context.database.write() as connection:  # zero-fuse's flusher, after the reader got through 0-2
        chunks.record_access(connection, {(ino, idx): fetched_at + 1 + idx for idx in range(3)})

    per_chunk = disk_bytes(os.stat(context.cache.chunk_path(ino, 0)))
    assert Evictor(context).evict(goal_bytes=3 * per_chunk) == 3

    assert [state_of(context, ino, idx) for idx in range(6)] == [ChunkState.REMOTE] * 3 + [ChunkState.CLEAN] * 3
    assert [file_bytes(context, ino, idx) for idx in range(3, 6)] == data[3:]


def test_chunks_fetched_ahead_and_never_read_are_evicted_in_turn(make_context, tmp_path, monkeypatch):
    """Kept for a reader only while one may still come: an abandoned read-ahead
    does not hold the cache for good, and a cache of nothing but unread chunks
    still gets under its target (invariant 4)."""
    context = make_context()
    ino, _data = evicted_file(context, b"film", 4)
    with context.database.write() as connection:
        for idx in range(4):
            requests.request_fetch(connection, ino, idx, requests.PREFETCH)
    run_fault_ins(context, tmp_path)

    per_chunk = disk_bytes(os.stat(context.cache.chunk_path(ino, 0)))
    assert Evictor(context).evict(goal_bytes=3 * per_chunk) == 1, "unread chunks must still make way for the target"
    left = [idx for idx in range(4) if state_of(context, ino, idx) == ChunkState.CLEAN]
    assert len(left) == 3

    # Long after, one of them is read and the others never were: they go first, as any old chunk.
    later = time.monotonic() + unread_module.KEPT_FOR_A_READER_S + 1
    monkeypatch.setattr(unread_module.time, "monotonic", lambda: later)
    read = left[0]
    with context.database.write() as connection:
        chunks.record_access(connection, {(ino, read): time.time()})
    assert Evictor(context).evict(goal_bytes=per_chunk) == 2
    assert [idx for idx in range(4) if state_of(context, ino, idx) == ChunkState.CLEAN] == [read]


def test_a_collection_that_died_holding_the_fence_does_not_stop_uploads(context):
    """A collector killed between its claim and its deletes (crashpoint gc.claimed)
    left the fence up: uploads, and so fsync, would wait for it for good. Its lock
    went with it; and one alive but silent for too long holds nothing either."""
    token = objects.collection_token()
    with context.database.write() as connection:
        assert objects.begin_collection(connection, time.time(), token)
        assert objects.uploads_wait(connection, time.time(), lambda: True)
        assert not objects.uploads_wait(connection, time.time(), lambda: False)  # its lock is free
        assert not objects.uploads_wait(connection, time.time() + objects.COLLECTION_STALE_S + 1,
                                                lambda: True)  # alive, but silent too long
    ino = make_file(context, b"a")
    fuse_write(context, ino, 0, chunk_data(1))
    upload_all(context)  # nobody holds <cache>/collect.lock


def test_a_collection_in_another_process_holds_the_fence_through_its_lock_whatever_its_pid(context):
    """The fence's liveness was the collector's pid, which means nothing across pid
    namespaces: a `zero gc` in a container beside a worker outside it looked dead
    (uploads went on under it), and a worker restarted in a new container could not
    take down the fence of its earlier life (uploads waited 15 minutes). The lock on
    <cache>/collect.lock says it in any namespace: held, uploads wait; gone, they go."""
    lock = context.cache.lock_path(COLLECT_LOCK)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                               f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
                               "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(600)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with context.database.write() as connection:  # its fence names a pid that is nobody here
            connection.exec_driver_sql("INSERT INTO meta (key, value) VALUES (?, ?)",
                                       (objects.COLLECTION_KEY, f"{time.time()!r} {_a_pid_that_is_gone()} 0"))
        assert Collector(context).collect() == 0  # one collection at a time
        ino = make_file(context, b"a")
        fuse_write(context, ino, 0, chunk_data(1))
        uploader = Uploader(context)
        for row in uploader.due(hurry=True):
            with pytest.raises(RemoteUnavailable, match="garbage collection"):
                uploader.upload(row)
    finally:
        holder.kill()
        holder.wait()
    upload_all(context)


def _a_pid_that_is_gone() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_second_collection_neither_takes_nor_ends_the_first_ones_fence(context):
    """`zero gc --delete` beside the worker's own collector replaced its fence and,
    finishing first, took it down while the worker still deleted (a review). One
    collection holds the lock at a time, and only the fence's owner refreshes or ends it."""
    first, second = objects.collection_token(), objects.collection_token()
    with context.database.write() as connection:
        assert objects.begin_collection(connection, time.time(), first)
        objects.end_collection(connection, second)
        assert objects.uploads_wait(connection, time.time(), lambda: True)
        assert not objects.still_alive(connection, time.time(), second)
        assert objects.still_alive(connection, time.time(), first)
        objects.end_collection(connection, first)
        assert not objects.uploads_wait(connection, time.time(), lambda: True)
    held = locking.HeldLock(context.cache.lock_path(COLLECT_LOCK))
    assert held.try_acquire()
    try:
        collector = Collector(context)
        assert collector.collect() == 0 and collector.waited_for_uploads
    finally:
        held.release()


def test_a_group_whose_chunk_was_written_during_its_upload_records_no_copy(make_context):
    """A write during an upload sends the chunk back to dirty, so no chunk is
    'uploading' and a collection may begin and sweep the copy the group sent; the
    group's last commit recorded that copy anyway, and the chunk's next upload
    took it for a stored duplicate: clean, with no copy anywhere (a review)."""
    context = make_context(grace_s=0)
    ino = make_file(context, b"a")
    data = chunk_data(1)
    fuse_write(context, ino, 0, data)
    uploader = Uploader(context)
    send = uploader._send

    def send_then_write_then_collect(item):
        outcome = send(item)
        fuse_write(context, ino, 0, data)  # the same bytes again: uploading -> dirty
        Collector(context).collect()
        return outcome

    uploader._send = send_then_write_then_collect
    for row in uploader.due(hurry=False):
        uploader.upload(row)
    upload_due_and_check_its_copy(context, ino)



# --- metrics ----------------------------------------------------------------------------------


def test_the_metrics_read_from_the_state_follow_the_backlog_and_the_cache(context):
    """What the endpoint serves at each scrape, collected in this process (the
    system test scrapes it over HTTP)."""
    from zero.worker.metrics import _StateCollector

    def scrape() -> dict[tuple[str, str], float]:
        return {(sample.name, sample.labels.get("state", "")): sample.value
                for family in _StateCollector(context).collect() for sample in family.samples}

    ino = make_file(context, b"a")
    fuse_write(context, ino, 0, chunk_data(1))
    waiting = scrape()
    assert waiting[("zero_backlog_chunks", "")] == 1
    assert waiting[("zero_backlog_bytes", "")] >= CHUNK - 4096
    assert waiting[("zero_cache_chunks", ChunkState.DIRTY.value)] == 1
    upload_all(context)
    uploaded = scrape()
    assert uploaded[("zero_backlog_chunks", "")] == 0 and uploaded[("zero_backlog_bytes", "")] == 0
    assert uploaded[("zero_cache_chunks", ChunkState.CLEAN.value)] == 1
