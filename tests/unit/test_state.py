"""The state on a real SQLite file: formatting, the namespace, chunk
transitions, objects and the request queues."""

import sqlite3
import os
import stat
import time
import types

import pytest
from sqlalchemy import insert, select

from support import damage_table
from zero.errors import CacheFormatError, DatabaseBusy, StateConflict, StateUnavailable
from zero.state import backlog, chunks, db, namespace, objects, pins, remotes, requests, restored, schema
from zero.state.schema import ChunkState

D, U, C, R, F = (ChunkState.DIRTY, ChunkState.UPLOADING, ChunkState.CLEAN, ChunkState.REMOTE,
                 ChunkState.FETCHING)
CHUNK = 64 * 1024


@pytest.fixture
def path(tmp_path):
    return tmp_path / "state.sqlite3"


@pytest.fixture
def database(path):
    opened = db.open_database(path, CHUNK, root_uid=1000, root_gid=1001)
    yield opened
    opened.dispose()


def make_inode(connection, mode=stat.S_IFREG | 0o644, nlink=1, size=0, target=None) -> int:
    return namespace.insert_inode(connection, mode=mode, uid=0, gid=0, nlink=nlink, size=size, atime_ns=0,
                                  mtime_ns=0, ctime_ns=0, rdev=0, target=target)


def make_file(connection, parent, name: bytes, **values) -> int:
    ino = make_inode(connection, **values)
    namespace.insert_dentry(connection, parent, name, ino)
    return ino


def make_dir(connection, parent, name: bytes) -> int:
    return make_file(connection, parent, name, mode=stat.S_IFDIR | 0o755, nlink=2)


def set_schema_version(path, version: str) -> None:
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (version,))


# --- formatting ------------------------------------------------------------------------


def test_open_formats_a_new_file(database, path):
    settings = db.format_settings(database)
    assert settings["schema_version"] == str(schema.SCHEMA_VERSION)
    assert settings["chunk_size"] == str(CHUNK)
    assert len(settings["fs_id"]) == 32
    assert len(bytes.fromhex(settings["hash_key"])) == 32
    assert len(bytes.fromhex(settings["encryption_key"])) == 32
    assert settings["hash_key"] != settings["encryption_key"]
    assert int(settings["created_ns"]) > 0
    with database.read() as connection:
        root = namespace.get_inode(connection, namespace.ROOT_INO)
        assert stat.S_ISDIR(root.mode)
        assert (root.uid, root.gid, root.nlink, root.size) == (1000, 1001, 2, 0)
        assert namespace.list_entries(connection, namespace.ROOT_INO) == []
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    # WAL is a property of the file: another program opening it sees it too.
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_reopening_keeps_the_filesystem(database, path):
    before = db.format_settings(database)
    with database.write() as connection:
        make_file(connection, namespace.ROOT_INO, b"kept")
    database.dispose()
    reopened = db.open_database(path, 8 * CHUNK)
    try:
        after = db.format_settings(reopened)
        assert after == before  # same fs_id, keys, and the chunk size it was formatted with
        with reopened.read() as connection:
            assert namespace.lookup(connection, namespace.ROOT_INO, b"kept") is not None
    finally:
        reopened.dispose()


def test_a_newer_format_says_to_upgrade(database, path):
    database.dispose()
    set_schema_version(path, "99")
    with pytest.raises(CacheFormatError) as caught:
        db.open_database(path)
    message = str(caught.value)
    assert "newer zero" in message and "format 99" in message and "upgrade" in message
    # The refusal left no lock behind: once fixed, the file opens.
    set_schema_version(path, str(schema.SCHEMA_VERSION))
    db.open_database(path).dispose()


def test_an_unknown_older_format_is_refused(database, path):
    database.dispose()
    set_schema_version(path, "0")
    with pytest.raises(CacheFormatError, match="unknown format 0"):
        db.open_database(path)


def test_a_format_1_cache_is_upgraded_in_place(database, path):
    with database.write() as connection:
        make_file(connection, namespace.ROOT_INO, b"kept")
    database.dispose()
    with sqlite3.connect(path) as raw:  # what zero before the remotes table wrote
        raw.execute("DROP TABLE remotes")
    set_schema_version(path, "1")
    upgraded = db.open_database(path)
    try:
        assert db.format_settings(upgraded)["schema_version"] == str(schema.SCHEMA_VERSION)
        with upgraded.write() as connection:
            assert namespace.lookup(connection, namespace.ROOT_INO, b"kept") is not None
            remotes.record_identity(connection, "home", "id-1")
            assert remotes.get(connection, "home").health == remotes.HEALTHY
    finally:
        upgraded.dispose()


def test_a_format_5_cache_backs_up_the_chunks_it_has_not_uploaded(database, path):
    """Format 5's segments left out what was written and not uploaded yet, and named a
    chunk's old object while it was written again: a restore read zeros or the older
    version (decision 110). The upgrade counts today's unuploaded chunks as changed and
    puts in the trigger that sees an upload finish; a new chunk goes out with its inode."""
    from zero.state import changelog
    with database.write() as connection:
        waiting = make_file(connection, namespace.ROOT_INO, b"waiting")
        chunks.take_lease(connection, waiting, 0)
        rewritten = make_file(connection, namespace.ROOT_INO, b"rewritten")
    to_clean(database, rewritten)
    lease(database, rewritten)  # written again since its upload: dirty, its old object still named
    with database.write() as connection:
        connection.exec_driver_sql("DELETE FROM changelog")  # everything so far was backed up
    database.dispose()
    with sqlite3.connect(path) as raw:  # the chunk trigger format 5 had
        raw.execute("DROP TRIGGER changelog_chunks_update")
        raw.execute("CREATE TRIGGER changelog_chunks_update AFTER UPDATE OF object_key ON chunks "
                    "WHEN OLD.object_key IS NOT NEW.object_key BEGIN INSERT OR REPLACE INTO changelog (tbl, k1, k2) "
                    "VALUES ('chunks', OLD.ino, OLD.idx); INSERT OR REPLACE INTO changelog (tbl, k1, k2) "
                    "VALUES ('chunks', NEW.ino, NEW.idx); END")
    set_schema_version(path, "5")
    upgraded = db.open_database(path)
    try:
        with upgraded.write() as connection:
            assert sorted(changelog.changed_rows(connection)[0]["chunks"]) == [(waiting, 0, None),
                                                                                 (rewritten, 0, None)]
            connection.exec_driver_sql("DELETE FROM changelog")
            chunks.release_leases(connection, rewritten, [0])
            version = chunks.get(connection, rewritten, 0).version
            chunks.start_upload(connection, rewritten, 0, version)
            chunks.finish_upload(connection, rewritten, 0, version, "k1", 1000)  # the same bytes: the same object
            assert changelog.changed_rows(connection)[0]["chunks"] == [(rewritten, 0, "k1")]
            connection.exec_driver_sql("DELETE FROM changelog")
            later = make_file(connection, namespace.ROOT_INO, b"later")
            chunks.take_lease(connection, later, 0)
            assert changelog.changed_rows(connection)[0]["chunks"] == [(later, 0, None)]
    finally:
        upgraded.dispose()


def test_remote_health_changes_are_reported_once(database):
    with database.write() as connection:
        remotes.record_identity(connection, "b2", "id-1")
        assert remotes.set_health(connection, "b2", remotes.UNHEALTHY, "connection refused") is True
        since = remotes.get(connection, "b2").since
        assert remotes.set_health(connection, "b2", remotes.UNHEALTHY, "timed out") is False
        row = remotes.get(connection, "b2")
        assert (row.health, row.last_error, row.since) == (remotes.UNHEALTHY, "timed out", since)
        assert remotes.set_health(connection, "b2", remotes.HEALTHY, None) is True
        assert [r.name for r in remotes.all_rows(connection)] == ["b2"]


def test_meta_set_and_get(database):
    with database.write() as connection:
        db.set_meta(connection, "heartbeat", "1")
        db.set_meta(connection, "heartbeat", "2")
    with database.read() as connection:
        assert db.get_meta(connection, "heartbeat") == "2"
        assert db.get_meta(connection, "absent") is None


def test_a_failed_write_rolls_back(database):
    with pytest.raises(RuntimeError):
        with database.write() as connection:
            make_file(connection, namespace.ROOT_INO, b"lost")
            raise RuntimeError("boom")
    with database.read() as connection:
        assert namespace.lookup(connection, namespace.ROOT_INO, b"lost") is None


def test_writes_go_on_after_a_failed_statement_a_failed_step_and_a_lock_not_had(database, path, monkeypatch):
    """The process keeps one connection for its writes: a statement SQLite refused,
    an exception of the caller's, or another process holding the write lock too
    long, rolls back and leaves writes working."""
    from sqlalchemy import exc
    with pytest.raises(exc.OperationalError):
        with database.write() as connection:
            make_file(connection, namespace.ROOT_INO, b"half")
            connection.exec_driver_sql("UPDATE no_such_table SET x = 1")
    with pytest.raises(RuntimeError):
        with database.write() as connection:
            db.set_meta(connection, "late", "1")
            raise RuntimeError("a step of the transaction failed")
    monkeypatch.setattr(db, "BUSY_TIMEOUT_S", 0.2)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process writing for longer than the busy timeout
    try:
        with pytest.raises(DatabaseBusy, match="stayed locked by another process"):
            with database.write() as connection:
                db.set_meta(connection, "late", "2")
    finally:
        other.execute("ROLLBACK")
        other.close()
    with database.write() as connection:
        make_file(connection, namespace.ROOT_INO, b"whole")
    with database.read() as connection:
        assert namespace.lookup(connection, namespace.ROOT_INO, b"half") is None
        assert namespace.lookup(connection, namespace.ROOT_INO, b"whole") is not None
        assert db.get_meta(connection, "late") is None


def test_a_write_begun_inside_a_write_is_refused_and_the_outer_one_commits(database):
    with database.write() as connection:
        make_file(connection, namespace.ROOT_INO, b"outer")
        with pytest.raises(RuntimeError, match="inside another one"):
            with database.write():
                pass
        make_file(connection, namespace.ROOT_INO, b"outer-after")
    with database.read() as connection:
        assert namespace.lookup(connection, namespace.ROOT_INO, b"outer") is not None
        assert namespace.lookup(connection, namespace.ROOT_INO, b"outer-after") is not None


# --- the namespace -------------------------------------------------------------------------


def test_insert_and_lookup(database):
    with database.write() as connection:
        ino = make_file(connection, namespace.ROOT_INO, b"a.txt", size=5)
        link = make_file(connection, namespace.ROOT_INO, b"link", mode=stat.S_IFLNK | 0o777, target=b"a.txt")
    with database.read() as connection:
        assert ino > namespace.ROOT_INO
        assert namespace.lookup(connection, namespace.ROOT_INO, b"a.txt") == ino
        assert namespace.lookup(connection, namespace.ROOT_INO, b"b.txt") is None
        assert namespace.get_inode(connection, ino).size == 5
        assert namespace.get_inode(connection, link).target == b"a.txt"
        assert namespace.parent_of(connection, ino) == namespace.ROOT_INO
        assert namespace.has_entries(connection, namespace.ROOT_INO)
        assert namespace.get_inode(connection, 12345) is None


def test_the_hot_reads_see_each_commit_and_hold_no_snapshot(database, path):
    with database.write() as connection:
        ino = make_file(connection, namespace.ROOT_INO, b"a.txt", size=5)
    assert namespace.lookup_inode(database, namespace.ROOT_INO, b"a.txt").size == 5
    assert namespace.read_inode(database, ino).ino == ino
    assert namespace.lookup_inode(database, namespace.ROOT_INO, b"b.txt") is None
    with database.write() as connection:
        namespace.update_inode(connection, ino, size=7)
    assert namespace.read_inode(database, ino).size == 7  # the same pooled connection, no stale snapshot
    assert database.single_read("SELECT ino FROM inodes ORDER BY ino") == (namespace.ROOT_INO,)  # rows left unread
    # A reader left inside a transaction would keep a TRUNCATE checkpoint from emptying the WAL.
    with sqlite3.connect(path) as other:
        busy, _, _ = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0
    assert os.path.getsize(f"{path}-wal") == 0


def test_the_hot_reads_cannot_write(database):
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        database.single_read("DELETE FROM inodes")


def test_disposing_the_database_closes_its_readers(database):
    assert database.single_read("SELECT 1") == (1,)
    connection = database._readers[-1]
    database.dispose()
    with pytest.raises(sqlite3.ProgrammingError):
        connection.execute("SELECT 1")  # closed: an idle reader does not outlive the database
    assert database.single_read("SELECT 1") == (1,)  # a read after (or during) the dispose closes its own
    assert database._readers == []


def test_inode_numbers_are_never_reused(database):
    with database.write() as connection:
        first = make_file(connection, namespace.ROOT_INO, b"a")
        namespace.delete_dentry(connection, namespace.ROOT_INO, b"a")
        namespace.delete_inode(connection, first)
        second = make_file(connection, namespace.ROOT_INO, b"a")
    assert second > first


def test_list_entries_in_name_order_with_modes(database):
    with database.write() as connection:
        made = {name: make_file(connection, namespace.ROOT_INO, name) for name in (b"b", b"a", b"C", b"\xff raw")}
        sub = make_dir(connection, namespace.ROOT_INO, b"dir")
        make_file(connection, sub, b"inside")
    with database.read() as connection:
        entries = namespace.list_entries(connection, namespace.ROOT_INO)
    assert [name for name, _, _ in entries] == [b"C", b"a", b"b", b"dir", b"\xff raw"]  # byte order
    assert entries[1] == (b"a", made[b"a"], stat.S_IFREG | 0o644)
    assert entries[3] == (b"dir", sub, stat.S_IFDIR | 0o755)


def test_repoint_dentry(database):
    with database.write() as connection:
        old = make_file(connection, namespace.ROOT_INO, b"target")
        new = make_inode(connection)
        namespace.repoint_dentry(connection, namespace.ROOT_INO, b"target", new)
    with database.read() as connection:
        assert namespace.lookup(connection, namespace.ROOT_INO, b"target") == new
        assert namespace.paths_of(connection, old) == []


def test_delete_inode_removes_everything_hanging_off_it(database):
    with database.write() as connection:
        ino = make_file(connection, namespace.ROOT_INO, b"f")
        other = make_file(connection, namespace.ROOT_INO, b"g")
        for idx in (0, 2, 5):
            chunks.take_lease(connection, ino, idx)
        chunks.take_lease(connection, other, 0)
        namespace.set_xattr(connection, ino, b"user.a", b"1")
        namespace.set_xattr(connection, other, b"user.a", b"2")
        requests.request_fetch(connection, ino, 2, requests.READER)
        requests.request_upload(connection, ino)
        connection.execute(insert(schema.pins).values(ino=ino, pinned_at=0.0))
        namespace.delete_dentry(connection, namespace.ROOT_INO, b"f")
        assert sorted(namespace.delete_inode(connection, ino)) == [0, 2, 5]
    with database.read() as connection:
        assert namespace.get_inode(connection, ino) is None
        assert chunks.all_rows_of(connection, ino) == []
        assert sorted(namespace.all_xattrs(connection, ino)) == []
        assert requests.pending_fetches(connection, 10) == []
        assert requests.pending_uploads(connection) == []
        assert connection.execute(select(schema.pins)).all() == []
        # the neighbour is untouched
        assert [row.idx for row in chunks.all_rows_of(connection, other)] == [0]
        assert namespace.all_xattrs(connection, other).get(b"user.a") == b"2"


def test_unlinked_inodes(database):
    with database.write() as connection:
        make_file(connection, namespace.ROOT_INO, b"named")
        orphan = make_inode(connection, nlink=0)
    with database.read() as connection:
        assert namespace.unlinked_inodes(connection) == [orphan]


def test_xattrs(database):
    with database.write() as connection:
        ino = make_file(connection, namespace.ROOT_INO, b"f")
        namespace.set_xattr(connection, ino, b"user.b", b"1")
        namespace.set_xattr(connection, ino, b"user.a", b"\x00bin")
        namespace.set_xattr(connection, ino, b"user.b", b"2")
    with database.write() as connection:
        assert sorted(namespace.all_xattrs(connection, ino)) == [b"user.a", b"user.b"]
        assert namespace.all_xattrs(connection, ino).get(b"user.b") == b"2"
        assert namespace.all_xattrs(connection, ino).get(b"user.a") == b"\x00bin"
        assert namespace.remove_xattr(connection, ino, b"user.a") is True
        assert namespace.remove_xattr(connection, ino, b"user.a") is False
        assert namespace.all_xattrs(connection, ino).get(b"user.a") is None


def test_paths_of_hard_links(database):
    with database.write() as connection:
        a = make_dir(connection, namespace.ROOT_INO, b"a")
        b = make_dir(connection, a, b"b")
        ino = make_file(connection, namespace.ROOT_INO, b"top", nlink=3)
        namespace.insert_dentry(connection, a, b"mid", ino)
        namespace.insert_dentry(connection, b, b"deep", ino)
    with database.read() as connection:
        assert sorted(namespace.paths_of(connection, ino)) == [b"/a/b/deep", b"/a/mid", b"/top"]
        assert namespace.path_of(connection, b) == b"/a/b"
        assert namespace.path_of(connection, namespace.ROOT_INO) == b"/"


def test_descendants(database):
    with database.write() as connection:
        a = make_dir(connection, namespace.ROOT_INO, b"a")
        b = make_dir(connection, a, b"b")
        f1 = make_file(connection, a, b"f1")
        f2 = make_file(connection, b, b"f2")
        outside = make_file(connection, namespace.ROOT_INO, b"outside")
    with database.read() as connection:
        found = namespace.descendants(connection, a)
        assert found[0] == a
        assert sorted(found) == sorted([a, b, f1, f2])
        assert outside not in found
        assert namespace.descendants(connection, f1) == [f1]


def test_totals(database):
    with database.write() as connection:
        make_file(connection, namespace.ROOT_INO, b"f", size=100)
        make_file(connection, namespace.ROOT_INO, b"g", size=23)
        make_dir(connection, namespace.ROOT_INO, b"d")
    with database.read() as connection:
        assert namespace.totals(connection) == {"files": 2, "inodes": 4, "logical_bytes": 123}


# --- chunk transitions ----------------------------------------------------------------------------


@pytest.fixture
def ino(database):
    with database.write() as connection:
        return make_file(connection, namespace.ROOT_INO, b"data")


def row(database, ino, idx=0):
    with database.read() as connection:
        return chunks.get(connection, ino, idx)


def lease(database, ino, idx=0):
    with database.write() as connection:
        return chunks.take_lease(connection, ino, idx)


def release(database, ino, idx=0):
    with database.write() as connection:
        chunks.release_leases(connection, ino, [idx])


def to_clean(database, ino, idx=0, key="k1"):
    lease(database, ino, idx)
    release(database, ino, idx)
    version = row(database, ino, idx).version
    with database.write() as connection:
        chunks.start_upload(connection, ino, idx, version)
        chunks.finish_upload(connection, ino, idx, version, key, 1000)


def to_remote(database, ino, idx=0, key="k1"):
    to_clean(database, ino, idx, key)
    with database.write() as connection:
        chunks.mark_evicted(connection, ino, idx)


def test_take_lease_on_a_new_chunk(database, ino):
    assert lease(database, ino) == chunks.Readiness.HERE
    chunk = row(database, ino)
    assert (chunk.state, chunk.version, chunk.leased) == ("dirty", 1, True)
    assert chunk.last_access > 0


def test_take_lease_again_bumps_the_version(database, ino):
    lease(database, ino)
    release(database, ino)
    assert not row(database, ino).leased
    assert lease(database, ino) == chunks.Readiness.HERE
    chunk = row(database, ino)
    assert (chunk.state, chunk.version, chunk.leased) == ("dirty", 2, True)


def test_take_lease_on_clean_makes_it_dirty(database, ino):
    to_clean(database, ino)
    assert row(database, ino).state == "clean"
    assert lease(database, ino) == chunks.Readiness.HERE
    chunk = row(database, ino)
    assert (chunk.state, chunk.version, chunk.leased) == ("dirty", 2, True)


@pytest.mark.parametrize("fetching", [False, True])
def test_take_lease_on_remote_asks_for_a_fault_in(database, ino, fetching):
    to_remote(database, ino)
    if fetching:
        with database.write() as connection:
            chunks.start_fetch(connection, ino, 0)
    before = row(database, ino)
    assert lease(database, ino) == chunks.Readiness.FETCH
    assert row(database, ino) == before  # nothing changed


def test_start_upload_refused_while_leased(database, ino):
    lease(database, ino)
    with database.write() as connection:
        with pytest.raises(StateConflict, match="chunk .*-0: expected dirty with .*, found dirty"):
            chunks.start_upload(connection, ino, 0, 1)
    assert row(database, ino).state == "dirty"


def test_start_upload_refused_when_the_version_moved_on(database, ino):
    lease(database, ino)
    release(database, ino)
    lease(database, ino)
    release(database, ino)
    with database.write() as connection:
        with pytest.raises(StateConflict):
            chunks.start_upload(connection, ino, 0, 1)
    with database.write() as connection:
        chunks.start_upload(connection, ino, 0, 2)
    assert row(database, ino).state == "uploading"


def test_full_cycle(database, ino):
    lease(database, ino)
    release(database, ino)
    with database.read() as connection:
        assert [r.idx for r in chunks.uploadable(connection, 10)] == [0]
    with database.write() as connection:
        chunks.start_upload(connection, ino, 0, 1)
    assert row(database, ino).state == "uploading"
    with database.write() as connection:
        chunks.finish_upload(connection, ino, 0, 1, "key-a", 900)
    chunk = row(database, ino)
    assert (chunk.state, chunk.object_key, chunk.stored_bytes) == ("clean", "key-a", 900)
    with database.read() as connection:
        assert [r.idx for r in chunks.eviction_candidates(connection, 10)] == [0]
    with database.write() as connection:
        chunks.mark_evicted(connection, ino, 0)
    chunk = row(database, ino)
    assert (chunk.state, chunk.stored_bytes, chunk.object_key) == ("remote", 0, "key-a")
    with database.write() as connection:
        fetched = chunks.start_fetch(connection, ino, 0)
    assert fetched.state == "fetching" and fetched.object_key == "key-a"
    with database.write() as connection:
        chunks.finish_fetch(connection, ino, 0, 900, time.time())
    chunk = row(database, ino)
    assert (chunk.state, chunk.stored_bytes, chunk.version) == ("clean", 900, 1)


def test_uploadable_skips_leased_and_clean(database, ino):
    lease(database, ino, 0)               # leased: not yet
    lease(database, ino, 1)
    release(database, ino, 1)             # ready
    to_clean(database, ino, 2)            # already uploaded
    with database.read() as connection:
        assert [r.idx for r in chunks.uploadable(connection, 10)] == [1]


def changelog_seq(database, table: str, k1, k2=0) -> int | None:
    with database.read() as connection:
        return connection.exec_driver_sql("SELECT seq FROM changelog WHERE tbl = ? AND k1 = ? AND k2 = ?",
                                          (table, k1, k2)).scalar()


def test_an_object_and_copy_recorded_again_after_a_delete_are_backed_up_again(database):
    # The changelog triggers renumber a key's row on every change (INSERT OR REPLACE). An
    # INSERT OR IGNORE around them would impose its IGNORE on the trigger: the key kept the
    # number of its delete, a backup trimming up to that number dropped it, and the new
    # object or copy was never backed up.
    with database.write() as connection:
        objects.record_intents(connection, {"k1": 10})
        objects.record_copies(connection, [("k1", "r1", 20)])
    with database.write() as connection:
        objects.forget_copy(connection, "k1", "r1")
        connection.exec_driver_sql("DELETE FROM objects WHERE key = 'k1'")
    deleted = changelog_seq(database, "placements", "k1", "r1"), changelog_seq(database, "objects", "k1")
    with database.write() as connection:
        objects.record_intents(connection, {"k1": 10})
        objects.record_copies(connection, [("k1", "r1", 20)])
    placed, known = changelog_seq(database, "placements", "k1", "r1"), changelog_seq(database, "objects", "k1")
    assert placed > deleted[0] and known > deleted[1]
    with database.write() as connection:  # a second record of what is there changes nothing
        objects.record_intents(connection, {"k1": 10})
        objects.record_copies(connection, [("k1", "r1", 20)])
    assert changelog_seq(database, "placements", "k1", "r1") == placed


def test_asked_for_chunks_come_in_the_order_asked_and_only_when_fuse_let_go(database, clock):
    with database.write() as connection:
        first, second = (make_file(connection, namespace.ROOT_INO, name) for name in (b"first", b"second"))
    for idx in (1, 0):
        lease(database, second, idx)
        release(database, second, idx)
    lease(database, first, 0)                 # still written: not yet
    lease(database, first, 1)
    release(database, first, 1)
    with database.write() as connection:
        requests.request_upload(connection, first)  # the clock ticks: first is older
        requests.request_upload(connection, second)
    with database.read() as connection:
        assert [(r.ino, r.idx) for r in chunks.requested_uploadable(connection, 10)] == \
            [(first, 1), (second, 0), (second, 1)]
        assert [(r.ino, r.idx) for r in chunks.requested_uploadable(connection, 2)] == [(first, 1), (second, 0)]


def test_an_upload_request_is_done_once_nothing_fuse_let_go_of_is_left(database):
    with database.write() as connection:
        clean, dirty, uploading, leased = (make_file(connection, namespace.ROOT_INO, name)
                                           for name in (b"clean", b"dirty", b"uploading", b"leased"))
    to_clean(database, clean)
    lease(database, dirty)
    release(database, dirty)
    lease(database, uploading)
    release(database, uploading)
    with database.write() as connection:
        chunks.start_upload(connection, uploading, 0, row(database, uploading).version)
    lease(database, leased)                   # fuse still writes it: a later fsync asks again
    with database.write() as connection:
        for ino in (clean, dirty, uploading, leased):
            requests.request_upload(connection, ino)
    with database.read() as connection:
        assert requests.any_upload_done(connection)
    with database.write() as connection:
        assert requests.finish_done_uploads(connection) == 2
    with database.read() as connection:
        assert sorted(requests.pending_uploads(connection)) == sorted([dirty, uploading])
        assert not requests.any_upload_done(connection)


def test_a_write_during_upload_wins_over_the_stale_upload(database, ino):
    lease(database, ino)
    release(database, ino)
    with database.write() as connection:
        chunks.start_upload(connection, ino, 0, 1)
    assert lease(database, ino) == chunks.Readiness.HERE   # a writer comes back: uploading -> dirty, version 2
    assert (row(database, ino).state, row(database, ino).version) == ("dirty", 2)
    with database.write() as connection:
        with pytest.raises(StateConflict):
            chunks.finish_upload(connection, ino, 0, 1, "stale", 10)
    chunk = row(database, ino)
    assert (chunk.state, chunk.version, chunk.object_key) == ("dirty", 2, None)
    release(database, ino)
    assert lease(database, ino) == chunks.Readiness.HERE   # still dirty-able
    assert row(database, ino).version == 3


def test_finish_upload_with_a_stale_version_leaves_it_uploading_then_abortable(database, ino):
    lease(database, ino)
    release(database, ino)
    with database.write() as connection:
        chunks.start_upload(connection, ino, 0, 1)
    with database.write() as connection:
        with pytest.raises(StateConflict):
            chunks.finish_upload(connection, ino, 0, 7, "stale", 10)
    assert row(database, ino).state == "uploading"
    with database.write() as connection:
        chunks.abort_upload(connection, ino, 0)
    assert row(database, ino).state == "dirty"
    assert lease(database, ino) == chunks.Readiness.HERE


def test_eviction_refused_for_dirty_pinned_or_leased(database, ino):
    lease(database, ino)
    with database.write() as connection:
        with pytest.raises(StateConflict):
            chunks.mark_evicted(connection, ino, 0)
    to_clean(database, ino, 1)
    with database.write() as connection:
        pins.set_pinned(connection, [ino], True)
    with database.write() as connection:
        with pytest.raises(StateConflict):
            chunks.mark_evicted(connection, ino, 1)
    with database.read() as connection:
        assert chunks.eviction_candidates(connection, 10) == []
    assert row(database, ino, 1).state == "clean"


@pytest.mark.parametrize("small_promise", [64, 0], ids=["looked-up-one-by-one", "read-in-one-statement"])
@pytest.mark.parametrize("files", [1, 2])
def test_an_fsync_s_promise_is_kept_by_an_upload_a_newer_write_or_a_delete(database, monkeypatch, small_promise,
                                                                          files):
    monkeypatch.setattr(backlog, "SMALL_PROMISE", small_promise)
    with database.write() as connection:
        inodes = [make_file(connection, namespace.ROOT_INO, f"f{n}".encode()) for n in range(files)]
    for ino in inodes:
        for idx in range(5):
            lease(database, ino, idx)
            release(database, ino, idx)
    with database.read() as connection:
        promised = backlog.unuploaded_versions(connection, inodes[0] if files == 1 else None)
    assert len(promised) == 5 * files
    last = inodes[-1]
    version = row(database, last, 0).version
    with database.write() as connection:             # uploaded at the promised version: kept
        chunks.start_upload(connection, last, 0, version)
        chunks.finish_upload(connection, last, 0, version, "k0", 1000)
    lease(database, last, 1)                         # written again: beyond this promise
    with database.write() as connection:
        chunks.delete_chunk(connection, last, 2)     # truncated away
        chunks.start_upload(connection, last, 3, row(database, last, 3).version)  # under way: still owed
    with database.read() as connection:
        pending = backlog.still_unuploaded(connection, promised)
    owed = {(ino, idx) for ino in inodes[:-1] for idx in range(5)} | {(last, 3), (last, 4)}
    assert sorted(pending) == sorted(owed)


def test_prefetch_asks_only_for_evicted_chunks_that_have_an_object(database, ino):
    """Prefetch's question: of the chunks after a reader, which to fault in. A
    cached chunk needs nothing; a chunk restored without an object is lost, and
    asking for it only logged an error for bytes nobody had read yet."""
    for idx in (0, 2, 3, 5):
        to_remote(database, ino, idx, key=f"k{idx}")
    to_clean(database, ino, 4, key="k4")
    with database.write() as connection:
        restored.insert_chunks(connection, [(ino, 6, None)])  # backed up before its upload: lost
    with database.read() as connection:
        assert chunks.remote_indexes(connection, ino, [6, 5, 4, 3, 2, 1]) == [2, 3, 5]
        assert chunks.remote_indexes(connection, ino, [0]) == [0]
        assert chunks.remote_indexes(connection, ino, []) == []


@pytest.mark.parametrize("owner, start, end", [
    (chunks.FUSE, D, R),      # undefined
    (chunks.WORKER, D, C),    # undefined: a clean chunk was always uploaded
    (chunks.FUSE, R, D),      # undefined: fuse never writes a chunk that is not local
    (chunks.WORKER, C, F),
])
def test_transition_refuses_an_undefined_move(database, ino, owner, start, end):
    lease(database, ino)
    with database.write() as connection:
        with pytest.raises(ValueError, match="no chunk transition"):
            chunks.transition(connection, owner, [start], end, ino=ino, idx=0)
    assert row(database, ino).state == "dirty"


@pytest.mark.parametrize("owner, start, end", [
    (chunks.FUSE, C, R),      # eviction is the worker's
    (chunks.FUSE, D, U),
    (chunks.WORKER, C, D),    # a write is fuse's
    (chunks.WORKER, D, D),
])
def test_transition_refuses_the_wrong_owner(database, ino, owner, start, end):
    to_clean(database, ino)
    with database.write() as connection:
        with pytest.raises(ValueError, match=f"{owner.value} may not move"):
            chunks.transition(connection, owner, [start], end, ino=ino, idx=0)
    assert row(database, ino).state == "clean"


def test_transition_from_the_wrong_state_conflicts(database, ino):
    to_clean(database, ino)
    with database.write() as connection:
        with pytest.raises(StateConflict, match="expected remote, found clean"):
            chunks.transition(connection, chunks.WORKER, [R], F, ino=ino, idx=0)
        with pytest.raises(StateConflict, match="found no chunk"):
            chunks.transition(connection, chunks.WORKER, [R], F, ino=ino, idx=9)


def test_recover_interrupted(database, ino):
    lease(database, ino, 0)
    release(database, ino, 0)
    with database.write() as connection:
        chunks.start_upload(connection, ino, 0, 1)
    to_remote(database, ino, 1)
    with database.write() as connection:
        chunks.start_fetch(connection, ino, 1)
    to_clean(database, ino, 2)
    with database.write() as connection:
        assert chunks.recover_interrupted(connection) == {"uploading": 1, "fetching": 1}
    assert [row(database, ino, i).state for i in range(3)] == ["dirty", "remote", "clean"]
    with database.write() as connection:
        assert chunks.recover_interrupted(connection) == {"uploading": 0, "fetching": 0}


def test_release_all_leases(database, ino):
    for idx in range(3):
        lease(database, ino, idx)
    release(database, ino, 1)
    with database.write() as connection:
        assert chunks.release_all_leases(connection) == 2
    assert [row(database, ino, i).leased for i in range(3)] == [False, False, False]


def test_drop_from(database, ino):
    for idx in range(4):
        lease(database, ino, idx)
    with database.write() as connection:
        requests.request_fetch(connection, ino, 3, requests.READER)
        assert sorted(chunks.drop_from(connection, ino, 2)) == [2, 3]
        assert chunks.drop_from(connection, ino, 2) == []
    with database.read() as connection:
        assert sorted(chunks.local_indexes(connection, ino)) == [0, 1]
        assert requests.pending_fetches(connection, 10) == []


# --- objects ------------------------------------------------------------------------------------


def test_record_intent_and_copies(database):
    with database.write() as connection:
        objects.record_intent(connection, "obj", 4096)
        objects.record_intent(connection, "obj", 4096)  # a retry keeps one row
        assert objects.get(connection, "obj").stored_bytes == 0
        objects.record_copy(connection, "obj", "home", 1234)
        objects.record_copy(connection, "obj", "home", 1234)
        objects.record_copy(connection, "obj", "office", 1234)
    with database.read() as connection:
        stored = objects.get(connection, "obj")
        assert (stored.plain_bytes, stored.stored_bytes, stored.unreferenced_since) == (4096, 1234, None)
        assert sorted(objects.remotes_holding(connection, "obj")) == ["home", "office"]
        assert objects.known_keys(connection) == {"obj"}
        assert objects.totals(connection) == {"objects": 1, "stored_bytes": 1234}


def test_garbage_collection_grace_period(database, ino):
    to_clean(database, ino, 0, key="used")
    with database.write() as connection:
        for key in ("used", "unused"):
            objects.record_intent(connection, key, 100)
            objects.record_copy(connection, key, "home", 50)
        assert chunks.referencing(connection, "used") == 1
        assert objects.mark_unreferenced(connection, now=1000.0) == 1
        assert objects.mark_unreferenced(connection, now=2000.0) == 0  # the first stamp stays
        assert objects.get(connection, "unused").unreferenced_since == 1000.0
        assert objects.get(connection, "used").unreferenced_since is None
        # Not yet past the grace period: nothing is claimed.
        assert objects.claim_garbage(connection, older_than=1000.0) == []
        # Past it: only the unreferenced one, with where its copies are.
        assert objects.claim_garbage(connection, older_than=1000.5) == [("unused", ["home"])]
        assert objects.get(connection, "unused") is None
        assert objects.remotes_holding(connection, "unused") == []
        assert objects.claim_garbage(connection, older_than=10**12) == []
        assert objects.get(connection, "used") is not None


def test_a_referenced_object_is_never_claimed_even_with_a_stale_stamp(database, ino):
    with database.write() as connection:
        objects.record_intent(connection, "revived", 100)
        objects.record_copy(connection, "revived", "home", 50)
        objects.mark_unreferenced(connection, now=1000.0)
    # An upload of identical content references it again before the collector runs.
    to_clean(database, ino, 0, key="revived")
    with database.write() as connection:
        assert objects.claim_garbage(connection, older_than=10**12) == []
        objects.mark_unreferenced(connection, now=3000.0)
        assert objects.get(connection, "revived").unreferenced_since is None  # stamp cleared


def test_record_copy_clears_a_stamp(database):
    with database.write() as connection:
        objects.record_intent(connection, "again", 100)
        objects.mark_unreferenced(connection, now=1000.0)
        objects.record_copy(connection, "again", "home", 50)
        assert objects.get(connection, "again").unreferenced_since is None
        assert objects.claim_garbage(connection, older_than=10**12) == []


def test_a_deleted_file_makes_its_objects_garbage(database, ino):
    to_clean(database, ino, 0, key="gone")
    with database.write() as connection:
        objects.record_intent(connection, "gone", 100)
        objects.record_copy(connection, "gone", "home", 50)
        assert objects.mark_unreferenced(connection, now=1000.0) == 0
        namespace.delete_inode(connection, ino)
        assert objects.mark_unreferenced(connection, now=2000.0) == 1
        assert objects.claim_garbage(connection, older_than=2001.0) == [("gone", ["home"])]


def test_claim_garbage_limit(database):
    with database.write() as connection:
        for n in range(5):
            objects.record_intent(connection, f"g{n}", 1)
        objects.mark_unreferenced(connection, now=1.0)
        assert len(objects.claim_garbage(connection, older_than=2.0, limit=3)) == 3
        assert len(objects.claim_garbage(connection, older_than=2.0, limit=3)) == 2


# --- request queues ------------------------------------------------------------------------------


@pytest.fixture
def clock(monkeypatch):
    """requests' clock, stepped by hand so that ordering by time is deterministic."""
    now = [100.0]

    def tick():
        now[0] += 1.0
        return now[0]

    monkeypatch.setattr(requests, "time", types.SimpleNamespace(time=tick))
    return now


def pending(database):
    with database.read() as connection:
        return [(r.ino, r.idx, r.priority) for r in requests.pending_fetches(connection, 10)]


def test_fetch_queue_orders_by_priority_then_age(database, clock):
    with database.write() as connection:
        requests.request_fetch(connection, 5, 0, requests.PRIME)
        requests.request_fetch(connection, 5, 1, requests.PREFETCH)
        requests.request_fetch(connection, 6, 0, requests.READER)
        requests.request_fetch(connection, 5, 2, requests.PREFETCH)
        requests.request_fetch(connection, 7, 0, requests.PIN)
    assert pending(database) == [(6, 0, 0), (5, 1, 1), (5, 2, 1), (7, 0, 2), (5, 0, 3)]


def test_a_reader_raises_the_priority_and_a_prefetch_does_not_lower_it(database, clock):
    with database.write() as connection:
        requests.request_fetch(connection, 5, 0, requests.PREFETCH)
        requests.request_fetch(connection, 5, 1, requests.PREFETCH)
        requests.request_fetch(connection, 5, 1, requests.READER)
        requests.request_fetch(connection, 5, 1, requests.PRIME)
    assert pending(database) == [(5, 1, 0), (5, 0, 1)]


def test_asking_again_as_urgently_keeps_the_request_s_place_in_the_queue(database, clock):
    with database.write() as connection:
        requests.request_fetch(connection, 5, 0, requests.PREFETCH)
        requests.request_fetch(connection, 5, 1, requests.PREFETCH)
        requests.request_fetch(connection, 5, 0, requests.PREFETCH)  # a later read ahead over the same chunk
        requests.request_fetch(connection, 5, 0, requests.PRIME)
    assert pending(database) == [(5, 0, 1), (5, 1, 1)]


def test_a_failed_fetch_leaves_the_queue_until_asked_again(database, clock):
    with database.write() as connection:
        requests.request_fetch(connection, 5, 0, requests.READER)
        requests.fail_fetch(connection, 5, 0, "remote unavailable")
        assert requests.fetch_error(connection, 5, 0) == "remote unavailable"
    assert pending(database) == []
    with database.write() as connection:
        requests.request_fetch(connection, 5, 0, requests.PREFETCH)  # asking again clears the error
        assert requests.fetch_error(connection, 5, 0) is None
    assert pending(database) == [(5, 0, 0)]
    with database.write() as connection:
        requests.done_fetch(connection, 5, 0)
    assert pending(database) == []


def test_upload_queue(database, clock):
    with database.write() as connection:
        requests.request_upload(connection, 9)
        requests.request_upload(connection, 3)
        requests.request_upload(connection, 9)  # once per inode
        assert requests.pending_uploads(connection) == [9, 3]
        requests.done_upload(connection, 9)
        assert requests.pending_uploads(connection) == [3]


def test_durable_checkpoint_fsyncs_the_wal_even_when_a_reader_blocks_the_checkpoint(database, path, monkeypatch):
    """fsync's promise rests on this: a PASSIVE checkpoint that a reader keeps from copying
    anything syncs nothing, so the commits in the WAL must be fsynced directly."""
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(db.os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")),
                                                    real_fsync(fd)))
    with database.read() as reader:
        reader.exec_driver_sql("SELECT count(*) FROM inodes").scalar()  # holds its snapshot open
        with database.write() as connection:
            make_file(connection, namespace.ROOT_INO, b"committed")
        database.durable_checkpoint()
    assert f"{path}-wal" in synced


def test_a_damaged_page_is_a_sentence_and_a_wrong_statement_stays_a_traceback(database, path):
    """SQLite's errors from outside zero (damage, here) say what happened and what to do;
    an error in a statement zero wrote is a bug and keeps SQLAlchemy's exception."""
    with database.write() as connection:
        for n in range(2000):
            make_file(connection, namespace.ROOT_INO, f"file-{n:05d}-{'x' * 40}".encode())
    database.durable_checkpoint()
    database.dispose()
    damage_table(path, "inodes")
    damaged = db.Database(path)
    try:
        with pytest.raises(StateUnavailable, match=r"is damaged .* zero restore"):
            with damaged.read() as connection:
                namespace.totals(connection)
        with pytest.raises(StateUnavailable, match="the change was not saved"):
            with damaged.write() as connection:
                make_file(connection, namespace.ROOT_INO, b"one more")
        with pytest.raises(StateUnavailable, match="is damaged"):  # zero-fuse's lookups, outside a transaction
            damaged.single_read("SELECT count(*) FROM inodes WHERE size >= 0")
        from sqlalchemy import exc
        with pytest.raises(exc.OperationalError, match="no such table"):
            with damaged.read() as connection:
                connection.exec_driver_sql("SELECT * FROM no_such_table")
    finally:
        damaged.dispose()
