"""A full cache disk is ENOSPC, never EINVAL, and never corrupts the state.

The cache lives on a small tmpfs and a writer fills it as fast as it can (no
pacing): the space check must not be overrun between two measurements, the
state database must keep room for its own commits, and a commit that fails
must leave memory and the database agreeing (a link count that drifted in
memory used to stay wrong after remount)."""

from __future__ import annotations

import errno
import os
import sqlite3

import pytest

from support import EXPECTED_WARNINGS, ZeroMount
from workerkit import KIB, MIB, drop_caches, tmpfs_at

DISK_FULL_LOG = "The cache disk has less than"
OK_OR_ENOSPC = (None, errno.ENOSPC)


@pytest.fixture
def tiny_cache_disk(tmp_path):
    """<tmp>/fs/cache on a 48 MiB tmpfs."""
    with tmpfs_at(tmp_path / "fs" / "cache", 48) as cache:
        yield cache


def outcome(call, *args):
    """None if the call succeeded, else its errno."""
    try:
        call(*args)
    except OSError as error:
        return error.errno
    return None


def fill(folder, block: bytes, limit: int):
    """Write files of 4 MiB as fast as possible until a write fails; returns
    (what each file holds as far as write() accepted it, the failing errno)."""
    accepted: dict[str, bytes] = {}
    total = 0
    while total < limit:
        name = f"f{len(accepted):03d}.bin"
        fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        written = bytearray()
        try:
            while len(written) < 4 * MIB:
                try:
                    done = os.write(fd, block)
                except OSError as error:
                    accepted[name] = bytes(written)
                    return accepted, error.errno
                written += block[:done]
                total += done
        finally:
            accepted[name] = bytes(written)
            os.close(fd)
    return accepted, None


def test_a_fast_writer_on_a_full_cache_disk_gets_enospc_and_the_state_stays_whole(tiny_cache_disk, tmp_path):
    # No worker: nothing is uploaded or evicted, so the disk really stays full.
    m = ZeroMount(tmp_path / "fs", chunkSize="256KiB", minFreeDisk="8MiB", fsyncWaitsForUpload=False)
    assert m.cache == tiny_cache_disk
    allowed = EXPECTED_WARNINGS + (DISK_FULL_LOG,)
    try:
        m.start_fuse()
        os.mkdir(m.mnt / "before")
        accepted, failure = fill(m.mnt / "before", os.urandom(KIB * 1024), limit=96 * MIB)
        assert failure == errno.ENOSPC, f"filling the cache disk ended with errno {failure}, expected ENOSPC"
        assert DISK_FULL_LOG in m.fuse_log()

        # Every other call either works or says ENOSPC: never EINVAL, never EIO.
        assert outcome(os.mkdir, m.mnt / "after-dir") in OK_OR_ENOSPC
        assert outcome(lambda: open(m.mnt / "after-file", "wb").close()) in OK_OR_ENOSPC
        fd = os.open(m.mnt / "before" / "f000.bin", os.O_RDWR)
        assert outcome(os.fsync, fd) in OK_OR_ENOSPC
        assert outcome(os.close, fd) in OK_OR_ENOSPC
        for index in range(20):  # push the database itself against the wall
            assert outcome(os.mkdir, m.mnt / f"d{index}") in OK_OR_ENOSPC
            assert outcome(os.symlink, "target", m.mnt / f"s{index}") in OK_OR_ENOSPC

        def check(when: str) -> None:
            drop_caches()
            for name, data in accepted.items():
                assert (m.mnt / "before" / name).read_bytes() == data, f"{name} read back wrong {when}"
            subdirs = sum(1 for entry in os.scandir(m.mnt) if entry.is_dir(follow_symlinks=False))
            assert os.stat(m.mnt).st_nlink == 2 + subdirs, f"the root's link count is wrong {when}"

        check("while the disk is full")
        m.unmount()
        m.start_fuse()
        check("after unmount and mount")
        database = sqlite3.connect(f"file:{m.cache / 'state.sqlite3'}?mode=ro", uri=True)
        try:
            assert database.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            wrong = database.execute(
                "SELECT i.ino, i.nlink, (SELECT count(*) FROM dentries d WHERE d.ino = i.ino) "
                "+ CASE WHEN i.mode & 61440 = 16384 THEN 1 + (SELECT count(*) FROM dentries d JOIN inodes c "
                "ON c.ino = d.ino WHERE d.parent = i.ino AND c.mode & 61440 = 16384) ELSE 0 END AS counted "
                "FROM inodes i WHERE i.ino != 1 AND i.nlink != counted").fetchall()
        finally:
            database.close()
        assert wrong == [], f"link counts in the state disagree with the directory entries: {wrong}"
        m.unmount()
        result = m.zero("fsck", str(m.cache), check=False)
        assert result.returncode == 0 and "No problems found." in result.stdout, result.stdout + result.stderr
    finally:
        m.close()
    problems = m.unexpected_log_lines(allowed)
    assert not problems, "zero logged unexpected warnings or errors:\n" + "\n".join(problems)
