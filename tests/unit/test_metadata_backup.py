"""The metadata backup and restore, driven by hand on real SQLite files and
local-folder remotes: the worker's context is built by zero-worker's own
build_context, chunks are uploaded by the real Uploader, nothing sleeps."""

from __future__ import annotations

import dataclasses
import os
import stat
import threading
import time
import types
from pathlib import Path

import pytest

from zero import crashpoints, wakeup
from zero.cachedir import CacheDir
from zero.config import Config, RemoteSpec
from zero.errors import ObjectCorrupt, RemoteUnavailable, RestoreError, WorkerUnavailable, WrongSecret
from zero.meta import backup, keyring, keys, restore, retention
from zero.meta.backup import MetadataBackup
from zero.remote import layout
from zero.remote import pool as pool_module
from zero.state import backlog, changelog, chunks, namespace, objects
from zero.state import db as state_db
from zero.wiring import build_context
from zero.worker.remotes import RemoteKeeper
from zero.worker.collector import Collector
from zero.worker.uploader import Uploader

CHUNK = 64 * 1024
CHEAP = keys.KdfParams(time_cost=1, memory_kib=64, parallelism=1)
PASSPHRASE = keyring.Secret(keys.PASSPHRASE, "correct horse battery", "test")


@pytest.fixture
def make_context(tmp_path):
    made = []

    def factory(name="fs", remotes=("a",), replicas=1):
        root = tmp_path / name
        cache = CacheDir(root / "cache")
        cache.prepare()
        config = Config(source="test", passphrase=PASSPHRASE.value, chunk_size_bytes=CHUNK, upload_delay_s=0,
                        replicas=replicas, remotes=tuple(RemoteSpec(r, "local", {"path": str(tmp_path / f"remote-{r}")})
                                      for r in remotes))
        context = build_context(config, cache)
        RemoteKeeper(context).start()  # as zero-worker does: each remote gets its marker
        keyring.ensure_published(context.database, context.pool.remotes, config, CHEAP)
        made.append(context)
        return context

    yield factory
    for context in made:
        context.database.dispose()


@pytest.fixture
def context(make_context):
    return make_context()


def make_inode(context, name: bytes, mode=stat.S_IFREG | 0o644, parent=namespace.ROOT_INO, target=None) -> int:
    with context.database.write() as connection:
        ino = namespace.insert_inode(connection, mode=mode, uid=1000, gid=1000, nlink=1, size=0, atime_ns=1,
                                     mtime_ns=2, ctime_ns=3, rdev=0, target=target)
        namespace.insert_dentry(connection, parent, name, ino)
    return ino


def write_chunk(context, ino: int, idx: int, data: bytes) -> None:
    """As zero-fuse writes and closes: lease, write the cache file, release."""
    with context.database.write() as connection:
        chunks.take_lease(connection, ino, idx)
    path = context.cache.chunk_path(ino, idx)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Path(path).write_bytes(data)
    with context.database.write() as connection:
        chunks.release_leases(connection, ino, [idx])
        namespace.update_inode(connection, ino, size=max(len(data) + idx * CHUNK, 0))


def upload_all(context) -> None:
    uploader = Uploader(context)
    for row in uploader.due(hurry=True):
        assert uploader.upload(row)


def backed_up_tables(database) -> dict[str, set]:
    with database.read() as connection:
        return {table: set(changelog.all_rows(connection, table)) for table in changelog.BACKED_UP}


def restore_into(tmp_path, context, name="restored", secret=PASSPHRASE, **kwargs):
    path = tmp_path / name / "state.sqlite3"
    result = restore.restore(path, context.pool.remotes, secret, **kwargs)
    return result, state_db.open_database(path)


def meta_keys(context, remote_index=0) -> list[str]:
    return sorted(key for key, _s, _m in context.pool.remotes[remote_index].list(layout.meta_prefix(context.fs_id)))


def build_tree(context) -> dict[str, int]:
    folder = make_inode(context, b"dir", mode=stat.S_IFDIR | 0o750)
    data = make_inode(context, b"data.bin", parent=folder)
    write_chunk(context, data, 0, b"a" * CHUNK)
    write_chunk(context, data, 1, b"tail")
    make_inode(context, b"link", mode=stat.S_IFLNK | 0o777, target=b"dir/data.bin")
    odd = make_inode(context, "odd name \u00e9\n".encode() + b"\xff")
    with context.database.write() as connection:
        namespace.insert_dentry(connection, namespace.ROOT_INO, b"hard", odd)
        namespace.update_inode(connection, odd, nlink=2)
        namespace.set_xattr(connection, odd, b"user.tag", b"\x00value")
    upload_all(context)
    return {"dir": folder, "data": data, "odd": odd}


# --- round trips ---------------------------------------------------------------------------------


def test_snapshot_then_journal_restores_the_same_tables(tmp_path, context):
    inos = build_tree(context)
    worker = MetadataBackup(context)
    assert worker.back_up() == 1
    assert meta_keys(context) == [layout.snapshot_key(context.fs_id, 1)]
    # Changes after the snapshot: a rename, a delete, a rewrite, an xattr gone, a dirty chunk never uploaded.
    with context.database.write() as connection:
        namespace.delete_dentry(connection, namespace.ROOT_INO, b"hard")
        namespace.insert_dentry(connection, inos["dir"], b"moved", inos["odd"])
        namespace.remove_xattr(connection, inos["odd"], b"user.tag")
        namespace.delete_dentry(connection, namespace.ROOT_INO, b"link")
        namespace.delete_inode(connection, namespace.lookup(connection, namespace.ROOT_INO, b"link") or 0)
    write_chunk(context, inos["data"], 1, b"new tail")
    upload_all(context)
    write_chunk(context, inos["odd"], 0, b"never uploaded")
    assert worker.back_up() == 2
    assert layout.journal_key(context.fs_id, 2) in meta_keys(context)

    result, restored = restore_into(tmp_path, context)
    try:
        assert (result.snapshot, result.journals) == (1, [2])
        expected = backed_up_tables(context.database)
        assert backed_up_tables(restored) == expected
        # Backed up naming no object: restored as lost, not as a hole that reads zeros (decision 110).
        assert result.never_uploaded == (1, 1)
        with restored.read() as connection:
            assert chunks.get(connection, inos["odd"], 0).object_key is None
            assert backlog.counts_by_state(connection) == {"remote": (3, 0)}
            settings = state_db.format_settings(restored)
            assert changelog.current_sequence(connection) == 0
        original = state_db.format_settings(context.database)
        for key in ("fs_id", "hash_key", "encryption_key", "chunk_size"):
            assert settings[key] == original[key]
        assert settings[backup.SEQUENCE_META] == "2" and settings[backup.NEEDS_SNAPSHOT_META] == "1"
    finally:
        restored.dispose()


def test_a_new_files_chunk_leased_before_any_write_is_not_restored_as_lost(tmp_path, context):
    """A create leases the new file's first chunk in its own transaction, before anything
    is written. Backed up in that moment (after an ftruncate too, which gives the file a
    size and writes nothing), it has no object like a lost chunk, but it held nothing:
    restored, it is a hole; only what was written counts as lost. So are the chunks of
    a file deleted while open, which the mount purges."""
    empty = make_inode(context, b"just-created")
    sized = make_inode(context, b"created-then-truncated")
    shrunk = make_inode(context, b"grown-then-shrunk")
    with context.database.write() as connection:
        chunks.lease_new_chunk(connection, empty, 0)
        chunks.lease_new_chunk(connection, sized, 0)
        namespace.update_inode(connection, sized, size=10 * CHUNK)
        chunks.lease_new_chunk(connection, shrunk, 0)
        namespace.update_inode(connection, shrunk, size=100)
    # A truncate into the leased chunk makes its cache file: zeros, no block on disk (a red-team run).
    os.makedirs(os.path.dirname(context.cache.chunk_path(shrunk, 0)), exist_ok=True)
    with open(context.cache.chunk_path(shrunk, 0), "wb") as chunk_file:
        chunk_file.truncate(100)
    written = make_inode(context, b"written")
    write_chunk(context, written, 0, b"not uploaded")
    open_but_deleted = make_inode(context, b"deleted-while-open")
    write_chunk(context, open_but_deleted, 0, b"not uploaded either")
    with context.database.write() as connection:
        namespace.delete_dentry(connection, namespace.ROOT_INO, b"deleted-while-open")
        namespace.update_inode(connection, open_but_deleted, nlink=0)
    assert MetadataBackup(context).back_up() == 1

    result, restored = restore_into(tmp_path, context)
    try:
        assert result.never_uploaded == (1, 1)
        with restored.read() as connection:
            assert [chunks.get(connection, ino, 0) for ino in (empty, sized, shrunk)] == [None] * 3
            assert chunks.get(connection, written, 0).object_key is None
            assert namespace.get_inode(connection, open_but_deleted) is None, "fsck would report its bytes lost"
    finally:
        restored.dispose()


def test_a_chunk_changed_since_its_upload_is_backed_up_as_not_uploaded_until_it_is_again(context):
    """A file appended to after its last chunk was uploaded: the chunk keeps its old,
    shorter object while dirty. Backed up with that object, a restore read the old end
    and then zeros up to the new size, silently (a review of decision 110). Until its
    next upload it goes with no object; the upload (even of identical bytes, which
    keeps the object) names the object again."""
    ino = make_inode(context, b"log.txt")
    write_chunk(context, ino, 0, b"first line\n")
    upload_all(context)
    worker = MetadataBackup(context)
    assert worker.back_up() == 1
    uploaded = chunks_backed_up(context)[(ino, 0)]
    assert uploaded is not None

    write_chunk(context, ino, 0, b"first line\nsecond line\n")
    assert worker.back_up() == 2
    assert chunks_backed_up(context, journal=True)[(ino, 0)] is None
    upload_all(context)
    assert worker.back_up() == 3
    assert chunks_backed_up(context, journal=True)[(ino, 0)] not in (None, uploaded)

    again = chunks_backed_up(context, journal=True)[(ino, 0)]
    write_chunk(context, ino, 0, b"first line\nsecond line\n")  # the same bytes again: the same object
    assert worker.back_up() == 4
    assert chunks_backed_up(context, journal=True)[(ino, 0)] is None
    upload_all(context)
    assert worker.back_up() == 5, "the upload of identical bytes went unrecorded"
    assert chunks_backed_up(context, journal=True)[(ino, 0)] == again


def test_a_chunk_truncated_away_and_leased_again_is_backed_up_as_gone(tmp_path, context):
    """Truncated to nothing, then written again: the write's lease makes the chunk's
    row anew, with no object, before its file exists. Left out of the journal as an
    unwritten lease, the truncate's deletion went missing with it, and a restore
    brought the chunk's old object back (a review of decision 110)."""
    ino = make_inode(context, b"rewound")
    write_chunk(context, ino, 0, b"old content")
    upload_all(context)
    worker = MetadataBackup(context)
    assert worker.back_up() == 1
    with context.database.write() as connection:
        chunks.drop_from(connection, ino, 0)
        namespace.update_inode(connection, ino, size=0)
        chunks.take_lease(connection, ino, 0)  # the next write, its file not made yet
    assert worker.back_up() == 2

    _result, restored = restore_into(tmp_path, context)
    try:
        with restored.read() as connection:
            assert chunks.get(connection, ino, 0) is None, "the truncated chunk's old object came back"
    finally:
        restored.dispose()


def test_a_leased_chunk_whose_file_appeared_during_the_backup_is_not_restored_as_lost(tmp_path, context,
                                                                                      monkeypatch):
    """The backup looks for a chunk's cache file after its read began: a new file's
    first write may make it in between, while the inode it read still has size 0."""
    ino = make_inode(context, b"being-written")
    with context.database.write() as connection:
        chunks.lease_new_chunk(connection, ino, 0)
    monkeypatch.setattr(MetadataBackup, "_written", lambda self, ino, idx: True)
    assert MetadataBackup(context).back_up() == 1

    result, restored = restore_into(tmp_path, context)
    try:
        assert result.never_uploaded == (0, 0)
        with restored.read() as connection:
            assert chunks.get(connection, ino, 0) is None
    finally:
        restored.dispose()


def chunks_backed_up(context, journal: bool = False) -> dict[tuple[int, int], str | None]:
    """The chunk rows of the newest segment: (ino, idx) -> object key."""
    with context.database.read() as connection:
        sequence = int(state_db.get_meta(connection, backup.SEQUENCE_META))
    kind = "journal" if journal else "snapshot"
    segment = restore.fetch_segment(context.pool.remotes, context.codec, context.fs_id, kind, sequence,
                                    [remote.name for remote in context.pool.remotes])
    return {(ino, idx): key for ino, idx, key in segment.rows["chunks"]}


def test_a_journal_costs_what_changed_not_the_namespace(context):
    folder = make_inode(context, b"many", mode=stat.S_IFDIR | 0o755)
    with context.database.write() as connection:
        for number in range(3000):
            ino = namespace.insert_inode(connection, mode=stat.S_IFREG | 0o644, uid=0, gid=0, nlink=1, size=0,
                                         atime_ns=0, mtime_ns=0, ctime_ns=0, rdev=0, target=None)
            namespace.insert_dentry(connection, folder, f"file-{number:05d}".encode(), ino)
    worker = MetadataBackup(context)
    worker.back_up()
    with context.database.write() as connection:
        namespace.update_inode(connection, ino, size=7, mtime_ns=99)
    assert worker.back_up() == 2
    remote = context.pool.remotes[0]
    snapshot_bytes = remote.head(layout.snapshot_key(context.fs_id, 1))
    journal_bytes = remote.head(layout.journal_key(context.fs_id, 2))
    assert journal_bytes < 1024 and journal_bytes * 5 < snapshot_bytes
    assert worker.back_up() is None  # nothing changed: nothing uploaded


def test_a_fresh_state_backs_up_nothing_but_its_first_snapshot(context):
    worker = MetadataBackup(context)
    assert worker.back_up() == 1
    assert worker.back_up() is None


# --- fsync's requests ------------------------------------------------------------------------------


def test_concurrent_fsync_requests_share_one_segment(context):
    worker = MetadataBackup(context)
    worker.back_up()
    listener = wakeup.WakeListener(context.cache.wake, wakeup.FUSE)  # poked by hand below
    asked = threading.Semaphore(0)
    errors = []

    def fsync(name):
        make_inode(context, name)
        try:
            backup.wait_backed_up(context.database, listener, asked.release, timeout_s=60)
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=fsync, args=(f"f{n}".encode(),)) for n in range(3)]
    for thread in threads:
        thread.start()
    for _ in threads:
        assert asked.acquire(timeout=60)  # each fsync has filed its request and woken the "worker"
    assert worker.back_up() == 2
    listener.poke()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors and not any(thread.is_alive() for thread in threads)
    assert set(meta_keys(context)) == {layout.snapshot_key(context.fs_id, 1), layout.journal_key(context.fs_id, 2)}
    with context.database.read() as connection:
        assert not changelog.has_requests(connection)


def test_waiting_without_a_worker_times_out_with_the_reason(context):
    make_inode(context, b"f")
    listener = wakeup.WakeListener(context.cache.wake, wakeup.FUSE)
    with pytest.raises(WorkerUnavailable, match="no worker here"):
        backup.wait_backed_up(context.database, listener, lambda: None, timeout_s=0.01,
                              why_no_answer=lambda: "no worker here")


def test_nothing_to_wait_for_returns_at_once(context):
    MetadataBackup(context).back_up()
    listener = wakeup.WakeListener(context.cache.wake, wakeup.FUSE)
    backup.wait_backed_up(context.database, listener, lambda: pytest.fail("woke the worker"), timeout_s=0)


# --- remotes failing ---------------------------------------------------------------------------------


def test_a_missed_remote_makes_the_next_segment_a_snapshot(make_context, monkeypatch):
    context = make_context(remotes=("a", "b"))
    worker = MetadataBackup(context)
    worker.back_up()
    make_inode(context, b"x")

    def refuse(key, data):
        raise RemoteUnavailable("unplugged")

    monkeypatch.setattr(context.pool.remotes[1], "put", refuse)
    assert worker.back_up() == 2
    monkeypatch.undo()
    make_inode(context, b"y")
    assert worker.back_up() == 3
    assert layout.snapshot_key(context.fs_id, 3) in meta_keys(context, 1)
    # Pruning dropped the journals each remote's newest snapshot supersedes.
    assert layout.journal_key(context.fs_id, 2) not in meta_keys(context, 0)


def test_no_remote_taking_it_changes_nothing(context, monkeypatch):
    worker = MetadataBackup(context)
    worker.back_up()
    make_inode(context, b"x")
    monkeypatch.setattr(context.pool.remotes[0], "put", lambda key, data: (_ for _ in ()).throw(
        RemoteUnavailable("down")))
    with pytest.raises(RemoteUnavailable, match="no remote took"):
        worker.back_up()
    monkeypatch.undo()
    with context.database.read() as connection:
        assert changelog.has_changes(connection)
    # A put that failed may still have landed (a timeout after the store): 2 is never reused.
    assert worker.back_up() == 3
    assert layout.snapshot_key(context.fs_id, 3) in meta_keys(context, 0)


class Killed(BaseException):
    """The worker's process dying at a crash point (what ZERO_TEST_CRASH_AT does)."""


def killed_after_the_puts(worker: MetadataBackup, monkeypatch) -> None:
    """One back_up that stores its segment in the remotes and dies before recording it."""
    def die(step):
        if step == "meta.stored":
            raise Killed(step)

    monkeypatch.setattr(crashpoints, "crash", die)
    with pytest.raises(Killed):
        worker.back_up()
    monkeypatch.undo()


def test_a_segment_stored_before_a_crash_is_never_stored_again_under_its_number(context, monkeypatch):
    """Killed after the puts, before the commit: the copies of journal 2 stay as they are, and
    the next attempt is a snapshot numbered 3 (a second journal 2, holding later changes that
    fsync was told are safe, could be missed by a restore reading a remote's first copy)."""
    worker = MetadataBackup(context)
    worker.back_up()
    make_inode(context, b"x")
    killed_after_the_puts(worker, monkeypatch)
    assert layout.journal_key(context.fs_id, 2) in meta_keys(context, 0)
    stored = []
    for remote in context.pool.remotes:
        monkeypatch.setattr(remote, "put", lambda key, data, put=remote.put: (stored.append(key), put(key, data)))
    make_inode(context, b"y")
    assert worker.back_up() == 3
    assert set(stored) == {layout.snapshot_key(context.fs_id, 3)}, stored
    # The snapshot supersedes the first copy of 2 wherever it landed; pruning then drops it.
    assert layout.journal_key(context.fs_id, 2) not in meta_keys(context, 0)
    make_inode(context, b"z")
    assert worker.back_up() == 4
    assert layout.journal_key(context.fs_id, 4) in meta_keys(context, 0)  # journals again once committed


# --- restore's refusals ---------------------------------------------------------------------------------


def test_restore_refuses_an_existing_state_and_a_wrong_secret(tmp_path, context):
    MetadataBackup(context).back_up()
    with pytest.raises(RestoreError, match="never overwrites"):
        restore.restore(context.database.path, context.pool.remotes, PASSPHRASE)
    with pytest.raises(WrongSecret):
        restore.restore(tmp_path / "x" / "state.sqlite3", context.pool.remotes,
                        keyring.Secret(keys.PASSPHRASE, "wrong", "test"))
    assert not (tmp_path / "x" / "state.sqlite3").exists()


def test_a_tampered_journal_is_refused(tmp_path, context):
    worker = MetadataBackup(context)
    worker.back_up()
    make_inode(context, b"x")
    worker.back_up()
    path = Path(context.pool.remotes[0].root) / layout.journal_key(context.fs_id, 2)
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 1
    path.write_bytes(bytes(blob))
    with pytest.raises(RestoreError, match="journal 2 could not be read"):
        restore.restore(tmp_path / "r" / "state.sqlite3", context.pool.remotes, PASSPHRASE)


def test_restore_at_an_older_snapshot(tmp_path, context):
    clock = [1_000_000.0]
    worker = MetadataBackup(context, clock=lambda: clock[0])
    make_inode(context, b"old")
    worker.back_up()
    old_tables = backed_up_tables(context.database)
    clock[0] += 2 * backup.SNAPSHOT_EVERY_S
    make_inode(context, b"new")
    assert worker.back_up() == 2  # an hour later: a snapshot again
    found = restore.catalog(context.pool.remotes, context.fs_id)
    assert sorted(found.snapshots) == [1, 2]
    # Remote mtimes are real time; plan on the catalog directly with the snapshot times.
    found.snapshots = {1: (100.0, ["a"]), 2: (200.0, ["a"])}
    assert found.plan(at=150.0) == (1, [])
    assert found.plan() == (2, [])
    with pytest.raises(RestoreError, match="at or before"):
        found.plan(at=50.0)
    assert old_tables["dentries"] != backed_up_tables(context.database)["dentries"]


# --- retention and the collector's rule -------------------------------------------------------------------


def test_retention_keeps_one_per_period():
    hour = 3600.0
    snapshots = [(n, 1_700_000_000.0 + n * hour / 2) for n in range(1, 200)]  # two an hour
    kept = retention.retained(snapshots, (("hourly", 4), ("daily", 2)))
    assert 199 in kept
    assert len(kept) <= 6 and len(kept) >= 4
    assert retention.retained(snapshots, ()) == {199}
    assert retention.retained([], (("hourly", 4),)) == set()


def test_objects_a_retained_point_references_are_protected(context):
    with context.database.write() as connection:
        for key, created, unreferenced in (("before", 10.0, 150.0), ("after", 300.0, 400.0),
                                           ("long-gone", 10.0, 20.0 - changelog.POINT_MARGIN_S)):
            objects.record_intent(connection, key, 1)
            connection.exec_driver_sql("UPDATE objects SET created = ?, unreferenced_since = ? WHERE key = ?",
                                       (created, unreferenced, key))
        changelog.record_point(connection, 1, "snapshot", 100.0, 101.0)
        assert changelog.referenced_by_retained_snapshots(connection, ["before", "after", "long-gone"]) == {"before"}
        changelog.forget_points(connection, [1])
        assert changelog.referenced_by_retained_snapshots(connection, ["before"]) == set()


def test_an_hour_old_point_restores_its_data_although_gc_ran_in_between(tmp_path, context):
    """Issue 10: `zero restore --at` an hour-old point shows the old contents, though the
    file was overwritten since and the collector ran past its grace period. The clocks are
    simulated: the backup's, the collector's, and the remote's mtimes (which --at plans on)."""
    start = time.time() + 60  # the objects' `created` stamps are real time: the simulated clock runs after them
    clock = [start]
    worker = MetadataBackup(context, clock=lambda: clock[0])
    ino = make_inode(context, b"notes.txt")
    old = b"version 1, an hour ago. " * 100
    write_chunk(context, ino, 0, old)
    upload_all(context)
    assert worker.back_up() == 1
    with context.database.read() as connection:
        old_key = chunks.get(connection, ino, 0).object_key

    clock[0] += 2 * backup.SNAPSHOT_EVERY_S
    write_chunk(context, ino, 0, b"version 2, now. " * 100)
    upload_all(context)
    assert worker.back_up() == 2  # an hour later: another snapshot, and the old one stays retained
    remote = context.pool.remotes[0]
    for sequence, at in ((1, start), (2, clock[0])):
        os.utime(remote.path_of(layout.snapshot_key(context.fs_id, sequence)), (at, at))

    collector = Collector(context)
    grace = context.config.gc_grace_period_s
    collector.collect(now=clock[0] + 1)              # stamps the old object unreferenced
    collector.collect(now=clock[0] + 2 * grace + 2)  # long past the grace period
    assert remote.head(context.remote_key(old_key)) is not None, "gc deleted what an hour-old point needs"

    result, restored = restore_into(tmp_path, context, at=start + 60)
    try:
        with restored.read() as connection:
            row = chunks.get(connection, ino, 0)
        assert row.object_key == old_key
        blob = remote.get(context.remote_key(old_key))
        assert context.codec.open(blob, expected_key=old_key) == old
    finally:
        restored.dispose()


def test_an_outage_burns_no_segment_number(context):
    """With no remote usable nothing is sent, so the retries during an outage (every 10 s
    while an fsync waits) neither use up numbers nor each read the whole state for a
    snapshot (a review): the next segment is the journal that was due."""
    worker = MetadataBackup(context)
    worker.back_up()
    make_inode(context, b"x")
    for remote in context.pool.remotes:
        context.pool.set_health(remote.name, pool_module.UNHEALTHY, "unplugged")
    for _ in range(3):
        with pytest.raises(RemoteUnavailable, match="no remote can take"):
            worker.back_up()
    for remote in context.pool.remotes:
        context.pool.set_health(remote.name, pool_module.HEALTHY)
    assert worker.back_up() == 2
    assert layout.journal_key(context.fs_id, 2) in meta_keys(context, 0)


def _uploaded_file(context, name: bytes, data: bytes) -> tuple[int, str]:
    ino = make_inode(context, name)
    write_chunk(context, ino, 0, data)
    upload_all(context)
    with context.database.read() as connection:
        return ino, chunks.get(connection, ino, 0).object_key


def _claimed_at_once_after_deleting(database, ino: int) -> list[str]:
    """The file is deleted, and a collection with no grace period claims what it can."""
    with database.write() as connection:
        namespace.delete_inode(connection, ino)
    with database.write() as connection:
        objects.mark_unreferenced(connection, time.time())
        return [key for key, _holders in objects.claim_garbage(connection, older_than=time.time() + 1)]


def test_a_restored_state_keeps_what_its_restored_journal_needs_from_gc(tmp_path, context):
    """A red-team run: restore onto a new machine, delete a file there, `zero gc --delete
    --grace 0`, lose that machine too: the next restore reads the same journal, and the
    fsynced file's object was gone (EIO). The restored segments are restore points."""
    worker = MetadataBackup(context)
    worker.back_up()
    ino, key = _uploaded_file(context, b"thesis.tex", b"fsynced " * 500)
    assert worker.back_up() == 2  # a journal
    _result, restored = restore_into(tmp_path, context)
    try:
        assert key not in _claimed_at_once_after_deleting(restored, ino), "gc took what the restored journal needs"
    finally:
        restored.dispose()


def test_a_segment_sent_but_not_yet_recorded_is_a_point_gc_respects(context, monkeypatch):
    """A red-team run: the worker stopped between storing a journal and recording it;
    meanwhile the file it names was deleted and gc ran; the restore read that journal
    and the file gave EIO. The point is recorded before anything is sent."""
    worker = MetadataBackup(context)
    worker.back_up()
    ino, key = _uploaded_file(context, b"f", b"named by journal 2 " * 100)
    killed_after_the_puts(worker, monkeypatch)
    assert key not in _claimed_at_once_after_deleting(context.database, ino), "gc took what the journal needs"


def test_every_journal_after_the_newest_snapshot_stays_a_point(context):
    """`zero restore --at` plans on any journal after the newest snapshot, but only the
    newest journal was a point: gc deleted what an older one needed (a red-team run)."""
    worker = MetadataBackup(context)
    assert worker.back_up() == 1
    for name in (b"a", b"b", b"c"):
        make_inode(context, name)
        worker.back_up()
    with context.database.read() as connection:
        kinds = dict(connection.exec_driver_sql("SELECT sequence, kind FROM backup_points").fetchall())
    assert kinds == {1: "snapshot", 2: "journal", 3: "journal", 4: "journal"}
    make_inode(context, b"d")
    assert worker.back_up(force_snapshot=True) == 5
    with context.database.read() as connection:
        kinds = dict(connection.exec_driver_sql("SELECT sequence, kind FROM backup_points").fetchall())
    assert kinds[5] == "snapshot" and "journal" not in kinds.values()  # superseded, as in the remotes


def test_a_snapshot_left_on_a_remote_that_was_away_stays_a_point_until_it_is_pruned_there(make_context):
    """A red-team run: pruning forgot a snapshot's point though a remote that was away
    still held it; `zero snapshots` offered it, gc deleted what it needed, and
    `zero restore --at` it read EIO. The point goes once every remote has pruned it."""
    context = make_context(remotes=("a", "b"))
    context.config = dataclasses.replace(context.config, snapshot_retention=())  # only the newest is kept
    worker = MetadataBackup(context)
    assert worker.back_up(force_snapshot=True) == 1
    context.pool.set_health("b", pool_module.UNHEALTHY, "away")
    make_inode(context, b"x")
    assert worker.back_up(force_snapshot=True) == 2
    assert layout.snapshot_key(context.fs_id, 1) in meta_keys(context, 1)  # b was not pruned
    with context.database.read() as connection:
        assert [sequence for sequence, _at in changelog.snapshot_points(connection)] == [1, 2]
    context.pool.set_health("b", pool_module.HEALTHY)
    make_inode(context, b"y")
    assert worker.back_up() == 3  # a snapshot again: b missed segment 2
    assert layout.snapshot_key(context.fs_id, 1) not in meta_keys(context, 1)
    with context.database.read() as connection:
        assert [sequence for sequence, _at in changelog.snapshot_points(connection)] == [3]


def test_a_snapshot_that_did_not_land_keeps_the_journal_points_the_remotes_still_hold(context, monkeypatch):
    """A review: the attempt of a snapshot forgot the journal points before it, though
    every put of it failed; the remotes still held only snapshot 1 and journal 2, and
    gc took the object journal 2 names (its file was fsynced)."""
    base = time.time()
    clock = [base]
    worker = MetadataBackup(context, clock=lambda: clock[0])
    assert worker.back_up() == 1
    ino, key = _uploaded_file(context, b"f", b"named by journal 2 " * 100)
    clock[0] = base + 1
    assert worker.back_up() == 2
    with context.database.write() as connection:
        namespace.delete_inode(connection, ino)
    with context.database.write() as connection:
        objects.mark_unreferenced(connection, base + 10)
    clock[0] = base + 100
    for remote in context.pool.remotes:
        monkeypatch.setattr(remote, "put", lambda key, data: (_ for _ in ()).throw(RemoteUnavailable("timed out")))
    with pytest.raises(RemoteUnavailable):
        worker.back_up(force_snapshot=True)
    monkeypatch.undo()
    assert restore.catalog(context.pool.remotes, context.fs_id).plan() == (1, [2])
    with context.database.write() as connection:
        claimed = [claimed_key for claimed_key, _ in objects.claim_garbage(connection, older_than=base + 1000)]
    assert key not in claimed, "gc claimed an object the newest restorable journal needs"


def _a_later_point_to_leave_behind(context) -> tuple[float, str]:
    """Snapshot 1 holds a; two hours later snapshot 2 holds b too (the remote's files
    stamped to match: retention keeps one snapshot an hour). The simulated clock runs
    after the objects' real `created` stamps. Returns when snapshot 1 was stored and
    b's object key."""
    start = time.time() + 60
    clock = [start]
    worker = MetadataBackup(context, clock=lambda: clock[0])
    _uploaded_file(context, b"a", b"A" * 100)
    assert worker.back_up() == 1
    _ino, later_key = _uploaded_file(context, b"b", b"B" * 100)
    clock[0] += 2 * backup.SNAPSHOT_EVERY_S
    assert worker.back_up() == 2
    remote = context.pool.remotes[0]
    for sequence, at in ((1, start), (2, start + 7200)):
        os.utime(remote.path_of(layout.snapshot_key(context.fs_id, sequence)), (at, at))
    return start, later_key


def _taker(tmp_path, context, name: str, **restore_args):
    """A cache restored read-write (`restore --at --take-over`, or plainly) and its context."""
    restore.restore(tmp_path / name / "state.sqlite3", context.pool.remotes, PASSPHRASE, **restore_args)
    return build_context(context.config, CacheDir(tmp_path / name))


def _collect_long_after(context, now: float) -> None:
    """One collection stamps what is unused, one past the grace period deletes it."""
    Collector(context).collect(now=now)
    Collector(context).collect(now=now + 2 * context.config.gc_grace_period_s + 2)


def test_a_later_point_keeps_its_objects_after_an_older_one_is_taken_over_and_restored_again(tmp_path, context):
    """Decision 105 (a review): the taker's state had no row for b's object, and the orphan
    sweep deleted it while snapshot 2 was still a restore point; rows carried by the taker's
    own snapshots keep it through the next plain restore too."""
    start, later_key = _a_later_point_to_leave_behind(context)
    remote = context.pool.remotes[0]
    taker = _taker(tmp_path, context, "taker", at=start + 60)
    make_inode(taker, b"t")
    taken_over = start + 4 * 3600
    assert MetadataBackup(taker, clock=lambda: taken_over).back_up() == 3
    _collect_long_after(taker, taken_over + 1)
    assert remote.head(context.remote_key(later_key)) is not None, "the taker's gc deleted what snapshot 2 names"

    third = _taker(tmp_path, context, "third")  # the newest: the taker's snapshot 3
    _collect_long_after(third, taken_over + 2)
    assert remote.head(layout.snapshot_key(context.fs_id, 2)) is not None
    assert remote.head(context.remote_key(later_key)) is not None, "the next restore's gc deleted what snapshot 2 names"


def test_content_written_again_after_a_roll_back_keeps_the_later_points_object(tmp_path, context, monkeypatch):
    """After the roll-back the same bytes are written again (the work redone) and deleted:
    the row the upload made was younger than every later point, so it was collected."""
    start, later_key = _a_later_point_to_leave_behind(context)
    remote = context.pool.remotes[0]
    taker = _taker(tmp_path, context, "taker", at=start + 60)
    redone = start + 5 * 3600
    monkeypatch.setattr(objects, "time", types.SimpleNamespace(time=lambda: redone))  # the row's `created`
    again, key = _uploaded_file(taker, b"b-again", b"B" * 100)
    assert key == later_key
    with taker.database.write() as connection:
        namespace.delete_inode(connection, again)
    _collect_long_after(taker, redone + 1)
    assert remote.head(context.remote_key(later_key)) is not None, "gc deleted what snapshot 2 names"


def _an_object_collected_after_a_snapshot_named_its_row(context, monkeypatch) -> tuple[float, float, str]:
    """A red-team run: x is written and deleted between snapshot 1 and snapshot 5, which
    still names x's row (unused, waiting for the collector); then the collector deletes
    x's object, as no point protects it. Returns when snapshots 1 and 5 were stored and
    x's object key."""
    start = time.time() + 60
    clock = [start]
    monkeypatch.setattr(objects, "time", types.SimpleNamespace(time=lambda: clock[0]))  # `created`
    worker = MetadataBackup(context, clock=lambda: clock[0])
    _uploaded_file(context, b"a", b"A" * 100)
    assert worker.back_up() == 1
    clock[0] += 2 * 3600
    make_inode(context, b"m")
    assert worker.back_up() == 2
    clock[0] += 10
    ino, key = _uploaded_file(context, b"x", b"X" * 100)
    assert worker.back_up() == 3
    clock[0] += 10
    with context.database.write() as connection:
        namespace.delete_inode(connection, ino)
    assert worker.back_up() == 4
    clock[0] += 10
    Collector(context).collect(now=clock[0])  # stamps x's object unused; journal 3 still protects it
    clock[0] += 120
    make_inode(context, b"n")
    assert worker.back_up(force_snapshot=True) == 5  # names x's row; the journals are pruned
    later = clock[0]
    clock[0] += 2 * context.config.gc_grace_period_s + 2
    Collector(context).collect(now=clock[0])
    remote = context.pool.remotes[0]
    assert remote.head(context.remote_key(key)) is None, "setup: the collector deleted x's object"
    assert worker.back_up() == 6  # the row's deletion
    with context.database.read() as connection:
        stored = dict(connection.exec_driver_sql("SELECT sequence, end_at FROM backup_points").fetchall())
    for meta_key, _size, _mtime in remote.list(layout.meta_prefix(context.fs_id)):
        sequence = layout.parse_snapshot_key(context.fs_id, meta_key) or layout.parse_journal_key(context.fs_id, meta_key)
        os.utime(remote.path_of(meta_key), (stored[sequence], stored[sequence]))
    return start, later, key


@pytest.mark.parametrize("point", ["before it (its row adopted)", "the snapshot naming it"])
def test_work_redone_after_a_roll_back_is_stored_again_not_deduplicated_onto_a_collected_object(
        tmp_path, context, monkeypatch, point):
    """Decision 106: a snapshot's garbage rows may name objects collected since. Rolled back
    (to snapshot 1, adopting snapshot 5's rows, or to snapshot 5 itself), the same bytes
    written again found the row, were deduplicated onto it and stored nowhere."""
    start, later, key = _an_object_collected_after_a_snapshot_named_its_row(context, monkeypatch)
    taker = _taker(tmp_path, context, "taker", at=start + 60 if point.startswith("before") else later + 1)
    _again, again_key = _uploaded_file(taker, b"x-again", b"X" * 100)
    assert again_key == key
    assert context.pool.remotes[0].head(context.remote_key(key)) is not None, \
        "the redone file names an object no remote holds"
