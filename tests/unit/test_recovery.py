"""The mount-time reconciler on a state and cache built by hand, as a
zero-fuse killed mid-work would leave them."""

import logging
import os
import stat

import pytest

from zero.cachedir import CacheDir
from zero.fuse import recovery
from zero.state import chunks, db, namespace

CHUNK = 64 * 1024


@pytest.fixture
def cache(tmp_path):
    made = CacheDir(tmp_path / "cache")
    made.prepare()
    return made


@pytest.fixture
def database(cache):
    opened = db.open_database(cache.root / "state.sqlite3", CHUNK)
    yield opened
    opened.dispose()


def make_file(connection, name: bytes | None, size: int = 0) -> int:
    ino = namespace.insert_inode(connection, mode=stat.S_IFREG | 0o644, uid=0, gid=0, nlink=0 if name is None else 1,
                                 size=size, atime_ns=0, mtime_ns=0, ctime_ns=0, rdev=0, target=None)
    if name is not None:
        namespace.insert_dentry(connection, namespace.ROOT_INO, name, ino)
    return ino


def write_chunk(cache: CacheDir, ino: int, idx: int, length: int) -> str:
    path = cache.chunk_path(ino, idx)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as out:
        out.write(bytes([idx + 1]) * length)
    return path


def make_clean(connection, ino: int, idx: int) -> None:
    chunks.take_lease(connection, ino, idx)
    chunks.release_leases(connection, ino, [idx])
    version = chunks.get(connection, ino, idx).version
    chunks.start_upload(connection, ino, idx, version)
    chunks.finish_upload(connection, ino, idx, version, f"key-{ino}-{idx}", 100)


def size_of(database, ino: int) -> int:
    with database.read() as connection:
        return namespace.get_inode(connection, ino).size


def test_reconcile_repairs_what_a_crash_leaves(database, cache, caplog):
    with database.write() as connection:
        # Written just before the crash: two leased chunks, the size never flushed.
        grown = make_file(connection, b"grown", size=10)
        chunks.take_lease(connection, grown, 0)
        chunks.take_lease(connection, grown, 1)
        # Unlinked while open, then the crash: nlink 0 with chunks.
        orphan = make_file(connection, None, size=CHUNK + 5)
        chunks.take_lease(connection, orphan, 0)
        chunks.take_lease(connection, orphan, 1)
        # An uploaded file whose cache file is longer than its size (a truncate
        # that shrank it after the upload): clean chunks never grow a size.
        clean = make_file(connection, b"clean", size=7)
        make_clean(connection, clean, 0)
        # A dirty file whose chunk file is shorter than its size (a sparse tail): never shrunk.
        sparse = make_file(connection, b"sparse", size=3 * CHUNK)
        chunks.take_lease(connection, sparse, 0)
        chunks.release_leases(connection, sparse, [0])
    write_chunk(cache, grown, 0, CHUNK)
    write_chunk(cache, grown, 1, 300)
    orphan_files = [write_chunk(cache, orphan, 0, CHUNK), write_chunk(cache, orphan, 1, 5)]
    write_chunk(cache, clean, 0, 500)
    write_chunk(cache, sparse, 0, 10)
    leftover = write_chunk(cache, 999, 3, 42)  # no row at all: a purge that did not finish unlinking
    with caplog.at_level(logging.INFO, logger="zero.fuse.recovery"):
        repaired = recovery.reconcile(database, cache, CHUNK)

    assert repaired == {"leases": 4, "orphan_inodes": 1, "orphan_files": 1, "sizes": 1, "empty_chunks": 0}
    assert "Recovered from an unclean stop" in caplog.text
    assert size_of(database, grown) == CHUNK + 300
    assert size_of(database, clean) == 7
    assert size_of(database, sparse) == 3 * CHUNK
    assert not os.path.exists(leftover)
    assert not any(os.path.exists(path) for path in orphan_files)
    assert os.path.getsize(cache.chunk_path(grown, 1)) == 300
    assert os.path.exists(cache.chunk_path(clean, 0))
    with database.read() as connection:
        assert namespace.get_inode(connection, orphan) is None
        assert chunks.all_rows_of(connection, orphan) == []
        assert not any(row.leased for row in chunks.all_rows(connection))
        assert [(row.idx, row.state) for row in chunks.all_rows_of(connection, grown)] == [(0, "dirty"), (1, "dirty")]
        assert chunks.get(connection, clean, 0).state == "clean"
        assert namespace.lookup(connection, namespace.ROOT_INO, b"grown") == grown

    # A second run finds nothing left to do, and says nothing.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="zero.fuse.recovery"):
        assert recovery.reconcile(database, cache, CHUNK) == {
            "leases": 0, "orphan_inodes": 0, "orphan_files": 0, "sizes": 0, "empty_chunks": 0}
    assert caplog.text == ""


def test_an_uploading_chunk_also_grows_the_size(database, cache):
    with database.write() as connection:
        ino = make_file(connection, b"f", size=0)
        chunks.take_lease(connection, ino, 2)
        chunks.release_leases(connection, ino, [2])
        chunks.start_upload(connection, ino, 2, 1)
    write_chunk(cache, ino, 2, 1000)
    assert recovery.reconcile(database, cache, CHUNK)["sizes"] == 1
    assert size_of(database, ino) == 2 * CHUNK + 1000


def test_an_orphan_inode_without_files_is_purged(database, cache):
    with database.write() as connection:
        orphan = make_file(connection, None)
        chunks.take_lease(connection, orphan, 0)  # the row, but the file was never created
        namespace.set_xattr(connection, orphan, b"user.x", b"1")
    repaired = recovery.reconcile(database, cache, CHUNK)
    assert (repaired["orphan_inodes"], repaired["orphan_files"]) == (1, 0)
    with database.read() as connection:
        assert namespace.get_inode(connection, orphan) is None
        assert sorted(namespace.all_xattrs(connection, orphan)) == []


def test_a_dirty_chunk_that_never_got_its_file_becomes_a_hole(database, cache):
    """The crash came between a new chunk's lease and the creation of its file."""
    with database.write() as connection:
        ino = make_file(connection, b"f", size=2 * CHUNK)
        chunks.take_lease(connection, ino, 0)
        chunks.take_lease(connection, ino, 1)
    write_chunk(cache, ino, 0, CHUNK)
    assert recovery.reconcile(database, cache, CHUNK)["empty_chunks"] == 1
    with database.read() as connection:
        assert [(row.idx, row.state) for row in chunks.all_rows_of(connection, ino)] == [(0, "dirty")]
    assert size_of(database, ino) == 2 * CHUNK


def test_a_chunk_overwritten_before_the_crash_is_backed_up_as_not_uploaded(database, cache):
    """An overwrite inside the file's size moves an uploaded chunk to dirty; the inode
    change that would carry it to a journal is flushed in a batch, which the crash lost.
    The journals went on naming the chunk's old object: a restore read the older
    version, silently (a review of decision 110)."""
    from zero.state import changelog
    with database.write() as connection:
        ino = make_file(connection, b"db.sqlite", size=CHUNK)
        make_clean(connection, ino, 0)
        chunks.take_lease(connection, ino, 0)  # the overwrite; its flush never came
        connection.exec_driver_sql("DELETE FROM changelog")  # all that came before was backed up
    write_chunk(cache, ino, 0, CHUNK)
    recovery.reconcile(database, cache, CHUNK)
    with database.read() as connection:
        assert changelog.changed_rows(connection)[0]["chunks"] == [(ino, 0, None)]


def test_files_that_are_not_chunks_are_left_alone(database, cache):
    stray = cache.chunks / "00" / "notes.txt"
    stray.parent.mkdir(exist_ok=True)
    stray.write_text("keep me")
    assert recovery.reconcile(database, cache, CHUNK)["orphan_files"] == 0
    assert stray.read_text() == "keep me"
