"""POSIX as Linux users expect it, with the errno ext4 gives, through the
real zero-fuse command (no worker: every chunk stays in the cache)."""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import subprocess
import sys
import time

import pytest

from support import zero_mounted

MIB = 1024 * 1024
SMALL_CHUNK = 64 * 1024  # chunkSize="64KiB": many chunks for little data

AT_FDCWD = -100
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
XATTR_CREATE, XATTR_REPLACE = os.XATTR_CREATE, os.XATTR_REPLACE
NOBODY = 65534

libc = ctypes.CDLL(None, use_errno=True)


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def renameat2(old, new, flags: int) -> None:
    if libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), ctypes.c_uint(flags)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(old))


def utimensat(path, atime: tuple[int, int], mtime: tuple[int, int]) -> None:
    times = (Timespec * 2)(Timespec(*atime), Timespec(*mtime))
    if libc.utimensat(AT_FDCWD, os.fsencode(path), times, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(path))


def errno_of(call, *args, **kwargs) -> int:
    """The errno a call fails with (the test fails if it succeeds)."""
    with pytest.raises(OSError) as caught:
        call(*args, **kwargs)
    return caught.value.errno


def write_file(path, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        assert os.write(fd, data) == len(data)
    finally:
        os.close(fd)


def read_file(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture
def mnt(make_mount):
    return make_mount(worker=False).mnt


@pytest.fixture
def small_chunks(make_mount):
    return make_mount(worker=False, chunkSize="64KiB").mnt


# --- open flags --------------------------------------------------------------------------------


def test_create_exclusive_on_existing_name_is_eexist(mnt):
    path = mnt / "f"
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    assert errno_of(os.open, path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644) == errno.EEXIST
    os.mkdir(mnt / "d")
    assert errno_of(os.open, mnt / "d", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644) == errno.EEXIST
    os.symlink("dangling-target", mnt / "link")
    assert errno_of(os.open, mnt / "link", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644) == errno.EEXIST
    assert not os.path.lexists(mnt / "dangling-target")


def test_open_missing_without_create_is_enoent(mnt):
    assert errno_of(os.open, mnt / "missing", os.O_RDONLY) == errno.ENOENT
    assert errno_of(os.open, mnt / "missing" / "below", os.O_RDONLY) == errno.ENOENT


def test_o_trunc_empties_the_file(mnt):
    path = mnt / "f"
    write_file(path, b"x" * 100_000)
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        assert os.fstat(fd).st_size == 0
        os.write(fd, b"new")
    finally:
        os.close(fd)
    assert os.stat(path).st_size == 3
    assert read_file(path) == b"new"


def test_o_trunc_on_read_only_open_keeps_data_and_write_on_it_is_ebadf(mnt):
    path = mnt / "f"
    write_file(path, b"keep")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert errno_of(os.write, fd, b"no") == errno.EBADF
    finally:
        os.close(fd)
    assert read_file(path) == b"keep"


def test_o_append_from_two_descriptors_never_overwrites(mnt):
    path = mnt / "log"
    write_file(path, b"start\n")
    first = os.open(path, os.O_WRONLY | os.O_APPEND)
    second = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        expected = b"start\n"
        for i in range(20):
            fd = first if i % 2 == 0 else second
            line = f"line {i} from fd {fd}\n".encode()
            os.write(fd, line)
            expected += line
        # An explicit seek does not matter with O_APPEND.
        os.lseek(first, 0, os.SEEK_SET)
        os.write(first, b"tail\n")
        expected += b"tail\n"
    finally:
        os.close(first)
        os.close(second)
    assert read_file(path) == expected
    assert os.stat(path).st_size == len(expected)


# --- data at any offset ----------------------------------------------------------------------------


def test_sparse_file_reads_zeros_in_the_hole(mnt):
    path = mnt / "sparse"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"head", 0)
        assert os.pwrite(fd, b"tail", 100 * MIB) == 4
        assert os.fstat(fd).st_size == 100 * MIB + 4
        assert os.pread(fd, 8, 0) == b"head" + bytes(4)
        assert os.pread(fd, 64 * 1024, 50 * MIB) == bytes(64 * 1024)
        assert os.pread(fd, 8, 100 * MIB - 4) == bytes(4) + b"tail"
        assert os.pread(fd, 100, 100 * MIB + 4) == b""  # at end of file
    finally:
        os.close(fd)
    assert os.stat(path).st_size == 100 * MIB + 4


def test_st_blocks_counts_what_the_cache_really_holds(mnt):
    """du and rsync --sparse judge a file by st_blocks: a 5 GiB hole costs nothing."""
    path = mnt / "hole"
    subprocess.run(["truncate", "-s", "5G", str(path)], check=True)
    du = subprocess.run(["du", "-k", str(path)], check=True, capture_output=True, text=True)
    assert int(du.stdout.split()[0]) < 1024, du.stdout
    assert os.stat(path).st_size == 5 * 1024 * MIB
    with open(path, "r+b") as f:  # data in two chunks far apart: about 2 MiB, not 5 GiB
        f.seek(MIB)
        f.write(os.urandom(MIB))
        f.seek(4 * 1024 * MIB)
        f.write(os.urandom(MIB))
    blocks = os.stat(path).st_blocks * 512
    assert 2 * MIB <= blocks < 4 * MIB, blocks
    small = mnt / "small"
    write_file(small, b"x" * 5000)
    assert 5000 <= os.stat(small).st_blocks * 512 <= 16 * 1024


def test_write_past_two_to_the_forty(mnt):
    path = mnt / "huge"
    offset = 2**40 + 5
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        assert os.pwrite(fd, b"ABCD", offset) == 4
        assert os.fstat(fd).st_size == offset + 4
        assert os.pread(fd, 4, offset) == b"ABCD"
        assert os.pread(fd, 10, offset - 5) == bytes(5) + b"ABCD"
    finally:
        os.close(fd)
    assert os.stat(path).st_size == offset + 4
    with open(path, "rb") as f:
        f.seek(offset - 2)
        assert f.read() == b"\0\0ABCD"


def test_writes_at_scattered_offsets_match_a_model(small_chunks):
    """pwrite/pread across 64 KiB chunk boundaries, checked against a bytearray."""
    path = small_chunks / "f"
    model = bytearray()
    rng = __import__("random").Random(1234)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        spots = [(SMALL_CHUNK - 3, 10), (0, 1), (5 * SMALL_CHUNK + 17, 3 * SMALL_CHUNK + 5),
                 (2 * SMALL_CHUNK, SMALL_CHUNK), (SMALL_CHUNK * 12 - 1, 2)]
        spots += [(rng.randrange(15 * SMALL_CHUNK), rng.randrange(1, 200_000)) for _ in range(30)]
        for offset, length in spots:
            data = rng.randbytes(length)
            assert os.pwrite(fd, data, offset) == length
            if len(model) < offset + length:
                model.extend(bytes(offset + length - len(model)))
            model[offset:offset + length] = data
            assert os.fstat(fd).st_size == len(model)
        for _ in range(40):
            offset = rng.randrange(len(model) + 10)
            length = rng.randrange(1, 300_000)
            assert os.pread(fd, length, offset) == bytes(model[offset:offset + length])
    finally:
        os.close(fd)
    assert read_file(path) == bytes(model)


# --- truncate ----------------------------------------------------------------------------------------


def test_truncate_grows_with_zeros_and_shrinks(mnt):
    path = mnt / "f"
    write_file(path, b"0123456789")
    os.truncate(path, 5)
    assert os.stat(path).st_size == 5
    assert read_file(path) == b"01234"
    os.truncate(path, 12)
    assert os.stat(path).st_size == 12
    assert read_file(path) == b"01234" + bytes(7)
    os.truncate(path, 0)
    assert read_file(path) == b""
    assert os.stat(path).st_size == 0


def test_truncate_of_a_directory_is_eisdir(mnt):
    os.mkdir(mnt / "d")
    assert errno_of(os.truncate, mnt / "d", 0) == errno.EISDIR


def test_ftruncate_across_chunk_boundaries(small_chunks):
    path = small_chunks / "f"
    data = os.urandom(5 * SMALL_CHUNK + 123)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        cut = 2 * SMALL_CHUNK + 7  # inside chunk 2
        os.ftruncate(fd, cut)
        assert os.fstat(fd).st_size == cut
        assert os.pread(fd, len(data), 0) == data[:cut]
        # grow past where the old data was: the old bytes must not come back
        os.ftruncate(fd, 6 * SMALL_CHUNK)
        assert os.fstat(fd).st_size == 6 * SMALL_CHUNK
        assert os.pread(fd, 6 * SMALL_CHUNK, 0) == data[:cut] + bytes(6 * SMALL_CHUNK - cut)
        # shrink to an exact chunk boundary, then write after a gap
        os.ftruncate(fd, SMALL_CHUNK)
        os.pwrite(fd, b"Z", 3 * SMALL_CHUNK)
        assert os.fstat(fd).st_size == 3 * SMALL_CHUNK + 1
        assert os.pread(fd, 3 * SMALL_CHUNK + 1, 0) == data[:SMALL_CHUNK] + bytes(2 * SMALL_CHUNK) + b"Z"
    finally:
        os.close(fd)
    assert read_file(path) == data[:SMALL_CHUNK] + bytes(2 * SMALL_CHUNK) + b"Z"


def test_shrink_then_grow_reads_zeros_after_remount(make_mount):
    mount = make_mount(worker=False, chunkSize="64KiB")
    path = mount.mnt / "f"
    data = os.urandom(3 * SMALL_CHUNK)
    write_file(path, data)
    os.truncate(path, SMALL_CHUNK + 10)
    os.truncate(path, 3 * SMALL_CHUNK)
    expected = data[:SMALL_CHUNK + 10] + bytes(2 * SMALL_CHUNK - 10)
    assert read_file(path) == expected
    mount.unmount()
    mount.start_fuse()
    assert os.stat(path).st_size == 3 * SMALL_CHUNK
    assert read_file(path) == expected


def test_shrink_into_a_hole(small_chunks):
    path = small_chunks / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"first", 0)
        os.pwrite(fd, b"last", 4 * SMALL_CHUNK)
        os.ftruncate(fd, 2 * SMALL_CHUNK + 100)  # chunk 2 was never written
        os.ftruncate(fd, 5 * SMALL_CHUNK)
        assert os.pread(fd, 5 * SMALL_CHUNK, 0) == b"first" + bytes(5 * SMALL_CHUNK - 5)
    finally:
        os.close(fd)


# --- directories --------------------------------------------------------------------------------------


def test_mkdir_and_rmdir_errors(mnt):
    os.mkdir(mnt / "d")
    assert stat.S_ISDIR(os.stat(mnt / "d").st_mode)
    assert errno_of(os.mkdir, mnt / "d") == errno.EEXIST
    write_file(mnt / "file", b"")
    assert errno_of(os.mkdir, mnt / "file") == errno.EEXIST
    assert errno_of(os.mkdir, mnt / "file" / "sub") == errno.ENOTDIR
    assert errno_of(os.mkdir, mnt / "missing" / "sub") == errno.ENOENT
    os.mkdir(mnt / "d" / "sub")
    write_file(mnt / "d" / "sub" / "f", b"x")
    assert errno_of(os.rmdir, mnt / "d") == errno.ENOTEMPTY
    assert errno_of(os.rmdir, mnt / "d" / "sub") == errno.ENOTEMPTY
    assert errno_of(os.rmdir, mnt / "file") == errno.ENOTDIR
    assert errno_of(os.rmdir, mnt / "missing") == errno.ENOENT
    assert errno_of(os.unlink, mnt / "d") == errno.EISDIR
    os.unlink(mnt / "d" / "sub" / "f")
    os.rmdir(mnt / "d" / "sub")
    os.rmdir(mnt / "d")
    assert not os.path.exists(mnt / "d")
    assert os.listdir(mnt) == ["file"]


def test_directory_link_counts(mnt):
    root_links = os.stat(mnt).st_nlink
    os.mkdir(mnt / "d")
    assert os.stat(mnt / "d").st_nlink == 2
    assert os.stat(mnt).st_nlink == root_links + 1
    for name in ("a", "b", "c"):
        os.mkdir(mnt / "d" / name)
    write_file(mnt / "d" / "file", b"")
    assert os.stat(mnt / "d").st_nlink == 5  # ".", its name, and three subdirectories' ".."
    os.rmdir(mnt / "d" / "a")
    assert os.stat(mnt / "d").st_nlink == 4


def test_readdir_of_five_thousand_entries(mnt):
    directory = mnt / "many"
    os.mkdir(directory)
    names = [f"entry-{i:05d}-{'x' * (i % 50)}" for i in range(5000)]
    for name in names:
        os.mknod(directory / name, stat.S_IFREG | 0o644)
    listed = os.listdir(directory)
    assert len(listed) == len(names)
    assert sorted(listed) == sorted(names)
    with os.scandir(directory) as entries:
        scanned = [(entry.name, entry.is_file(follow_symlinks=False)) for entry in entries]
    assert sorted(scanned) == sorted((name, True) for name in names)
    assert os.stat(directory).st_nlink == 2


# --- rename ------------------------------------------------------------------------------------------


def test_rename_over_a_file_replaces_it(mnt):
    write_file(mnt / "a", b"from a")
    write_file(mnt / "b", b"old b")
    ino = os.stat(mnt / "a").st_ino
    os.rename(mnt / "a", mnt / "b")
    assert not os.path.lexists(mnt / "a")
    assert read_file(mnt / "b") == b"from a"
    assert os.stat(mnt / "b").st_ino == ino
    assert os.stat(mnt / "b").st_nlink == 1
    assert sorted(os.listdir(mnt)) == ["b"]


def test_rename_over_a_file_that_is_open(mnt):
    write_file(mnt / "a", b"new")
    write_file(mnt / "b", b"old contents")
    with open(mnt / "b", "rb") as old:
        os.rename(mnt / "a", mnt / "b")
        assert old.read() == b"old contents"
        assert os.fstat(old.fileno()).st_nlink == 0
    assert read_file(mnt / "b") == b"new"
    assert sorted(os.listdir(mnt)) == ["b"]


def test_rename_directories(mnt):
    os.mkdir(mnt / "d1")
    write_file(mnt / "d1" / "inside", b"x")
    os.mkdir(mnt / "empty")
    os.rename(mnt / "d1", mnt / "empty")  # over an empty directory
    assert read_file(mnt / "empty" / "inside") == b"x"
    assert not os.path.exists(mnt / "d1")

    os.mkdir(mnt / "other")
    assert errno_of(os.rename, mnt / "other", mnt / "empty") == errno.ENOTEMPTY
    write_file(mnt / "file", b"f")
    assert errno_of(os.rename, mnt / "file", mnt / "other") == errno.EISDIR
    assert errno_of(os.rename, mnt / "other", mnt / "file") == errno.ENOTDIR
    os.mkdir(mnt / "other" / "child")
    assert errno_of(os.rename, mnt / "other", mnt / "other" / "child" / "moved") == errno.EINVAL
    assert errno_of(os.rename, mnt / "other", mnt / "other" / "moved") == errno.EINVAL
    assert errno_of(os.rename, mnt / "missing", mnt / "x") == errno.ENOENT
    # nothing changed by the refused renames
    assert sorted(os.listdir(mnt)) == ["empty", "file", "other"]
    assert os.listdir(mnt / "other") == ["child"]
    assert read_file(mnt / "file") == b"f"


def test_rename_across_directories_updates_parent_links(mnt):
    os.makedirs(mnt / "a" / "moving" / "deep")
    os.mkdir(mnt / "b")
    write_file(mnt / "a" / "moving" / "deep" / "f", b"data")
    write_file(mnt / "a" / "file", b"file")
    assert os.stat(mnt / "a").st_nlink == 3
    assert os.stat(mnt / "b").st_nlink == 2
    os.rename(mnt / "a" / "moving", mnt / "b" / "moved")
    assert os.stat(mnt / "a").st_nlink == 2
    assert os.stat(mnt / "b").st_nlink == 3
    assert read_file(mnt / "b" / "moved" / "deep" / "f") == b"data"
    assert os.listdir(mnt / "a") == ["file"]
    os.rename(mnt / "a" / "file", mnt / "b" / "moved" / "deep" / "file2")
    assert os.listdir(mnt / "a") == []
    assert sorted(os.listdir(mnt / "b" / "moved" / "deep")) == ["f", "file2"]
    assert read_file(mnt / "b" / "moved" / "deep" / "file2") == b"file"
    assert os.stat(mnt / "b").st_nlink == 3
    os.rmdir(mnt / "a")


def test_rename_noreplace_and_exchange(mnt):
    write_file(mnt / "a", b"AAA")
    write_file(mnt / "b", b"BB")
    assert errno_of(renameat2, mnt / "a", mnt / "b", RENAME_NOREPLACE) == errno.EEXIST
    assert read_file(mnt / "a") == b"AAA" and read_file(mnt / "b") == b"BB"
    renameat2(mnt / "a", mnt / "c", RENAME_NOREPLACE)
    assert read_file(mnt / "c") == b"AAA" and not os.path.lexists(mnt / "a")

    ino_b, ino_c = os.stat(mnt / "b").st_ino, os.stat(mnt / "c").st_ino
    renameat2(mnt / "b", mnt / "c", RENAME_EXCHANGE)
    assert read_file(mnt / "b") == b"AAA" and read_file(mnt / "c") == b"BB"
    assert os.stat(mnt / "b").st_ino == ino_c and os.stat(mnt / "c").st_ino == ino_b
    assert errno_of(renameat2, mnt / "b", mnt / "missing", RENAME_EXCHANGE) == errno.ENOENT

    # exchange a directory in one parent with a file in another
    os.makedirs(mnt / "p1" / "dir")
    os.mkdir(mnt / "p2")
    write_file(mnt / "p1" / "dir" / "inner", b"inner")
    write_file(mnt / "p2" / "file", b"file")
    renameat2(mnt / "p1" / "dir", mnt / "p2" / "file", RENAME_EXCHANGE)
    assert read_file(mnt / "p1" / "dir") == b"file"
    assert read_file(mnt / "p2" / "file" / "inner") == b"inner"
    assert os.stat(mnt / "p1").st_nlink == 2
    assert os.stat(mnt / "p2").st_nlink == 3
    assert sorted(os.listdir(mnt)) == ["b", "c", "p1", "p2"]


# --- unlink ------------------------------------------------------------------------------------------


def test_unlink_while_open_keeps_the_data_for_the_handle(mnt):
    path = mnt / "f"
    write_file(path, b"hello")
    fd = os.open(path, os.O_RDWR)
    try:
        os.unlink(path)
        assert os.listdir(mnt) == []
        assert not os.path.lexists(path)
        assert errno_of(os.stat, path) == errno.ENOENT
        assert os.fstat(fd).st_nlink == 0
        assert os.pread(fd, 100, 0) == b"hello"
        os.pwrite(fd, b" world", 5)
        assert os.pread(fd, 100, 0) == b"hello world"
        assert os.fstat(fd).st_size == 11
        os.ftruncate(fd, 4)
        assert os.pread(fd, 100, 0) == b"hell"
        os.fchmod(fd, 0o600)
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600
        # a new file may take the old name meanwhile
        write_file(path, b"new one")
        assert read_file(path) == b"new one"
        assert os.pread(fd, 100, 0) == b"hell"
    finally:
        os.close(fd)
    assert os.listdir(mnt) == ["f"]
    assert read_file(path) == b"new one"


# --- symlinks -------------------------------------------------------------------------------------------


def test_symlinks(mnt):
    write_file(mnt / "target", b"through the link")
    os.symlink("target", mnt / "rel")
    assert os.readlink(mnt / "rel") == "target"
    assert stat.S_ISLNK(os.lstat(mnt / "rel").st_mode)
    assert os.lstat(mnt / "rel").st_size == len("target")
    assert read_file(mnt / "rel") == b"through the link"

    os.symlink("nowhere/at/all", mnt / "dangling")
    assert os.readlink(mnt / "dangling") == "nowhere/at/all"
    assert os.path.lexists(mnt / "dangling") and not os.path.exists(mnt / "dangling")
    assert errno_of(os.stat, mnt / "dangling") == errno.ENOENT

    long_target = "/".join(["d" * 99] * 10)  # 999 bytes
    long_target += "x"
    assert len(long_target) == 1000
    os.symlink(long_target, mnt / "long")
    assert os.readlink(mnt / "long") == long_target
    assert os.lstat(mnt / "long").st_size == 1000

    assert errno_of(os.readlink, mnt / "target") == errno.EINVAL
    assert errno_of(os.symlink, "x", mnt / "rel") == errno.EEXIST
    raw = b"\xff\xfe-target"
    os.symlink(raw, os.fsencode(mnt / "bytes"))
    assert os.readlink(os.fsencode(mnt / "bytes")) == raw


# --- hard links ----------------------------------------------------------------------------------------


def test_hard_links_share_inode_link_count_and_data(mnt):
    os.mkdir(mnt / "sub")
    first, second, third = mnt / "first", mnt / "second", mnt / "sub" / "third"
    write_file(first, b"original")
    os.link(first, second)
    os.link(second, third)
    stats = [os.stat(p) for p in (first, second, third)]
    assert {s.st_ino for s in stats} == {stats[0].st_ino}
    assert [s.st_nlink for s in stats] == [3, 3, 3]

    with open(second, "r+b") as f:
        f.write(b"CHANGED!")
    assert read_file(first) == b"CHANGED!"
    assert read_file(third) == b"CHANGED!"
    with open(third, "ab") as f:
        f.write(b" and more")
    assert os.stat(first).st_size == len(b"CHANGED! and more")
    assert read_file(first) == b"CHANGED! and more"
    assert read_file(second) == b"CHANGED! and more"
    os.chmod(first, 0o640)
    assert stat.S_IMODE(os.stat(third).st_mode) == 0o640

    os.unlink(first)
    assert os.stat(second).st_nlink == 2
    assert os.stat(third).st_nlink == 2
    assert read_file(third) == b"CHANGED! and more"
    os.unlink(third)
    assert os.stat(second).st_nlink == 1
    assert read_file(second) == b"CHANGED! and more"

    assert errno_of(os.link, mnt / "sub", mnt / "dirlink") == errno.EPERM
    assert errno_of(os.link, second, mnt / "sub") == errno.EEXIST
    assert errno_of(os.link, mnt / "missing", mnt / "x") == errno.ENOENT


def test_unlinking_an_open_hard_link_updates_the_other_names(mnt):
    """libfuse hides an open file it unlinks (a rename to .fuse_hidden…):
    the other names must still see the link count drop at once."""
    first, second = mnt / "first", mnt / "second"
    write_file(first, b"shared")
    os.link(first, second)
    assert os.stat(second).st_nlink == 2  # cached by the kernel for a second
    with open(first, "rb") as f:
        os.unlink(first)
        assert os.stat(second).st_nlink == 1
        assert os.fstat(f.fileno()).st_nlink == 1
        assert f.read() == b"shared"
    assert os.listdir(mnt) == ["second"]
    os.link(second, first)
    assert os.stat(second).st_nlink == 2
    write_file(mnt / "other", b"replacement")
    with open(second, "rb") as f:
        os.rename(mnt / "other", second)  # replaces an open name: hidden too
        assert os.stat(first).st_nlink == 1
        assert f.read() == b"shared"
    assert read_file(second) == b"replacement"
    assert read_file(first) == b"shared"
    assert sorted(os.listdir(mnt)) == ["first", "second"]




def test_after_fsync_through_one_name_a_reader_of_another_name_sees_the_write(mnt):
    """Each name of a hard-linked file is its own kernel inode with its own
    pages: a reader that opened the other name before the write read the old
    bytes for up to a second after fsync returned (found by a red-team pass).
    On ext4 it reads the new ones; fsync tells the kernel to drop the others."""
    first, second = mnt / "first", mnt / "second"
    write_file(first, b"1" * 8192)
    os.link(first, second)
    reader = os.open(second, os.O_RDONLY)
    writer = os.open(first, os.O_RDWR)
    try:
        assert os.pread(reader, 8192, 0) == b"1" * 8192  # now in the kernel's pages of the other name
        os.pwrite(writer, b"2" * 8192, 0)
        os.fsync(writer)
        assert os.pread(reader, 8192, 0) == b"2" * 8192
    finally:
        os.close(writer)
        os.close(reader)



def test_after_fsync_through_a_name_unlinked_while_open_the_other_name_reads_the_write(mnt):
    """Unlinked while open, the first name lives on as libfuse's hidden name: the
    file has one name left (nlink 1) but still two kernel inodes, so the other
    name's pages must go as for any hard link (found by a review; old bytes for
    up to a second, through a fresh open too)."""
    first, second = mnt / "first", mnt / "second"
    write_file(first, b"1" * 8192)
    os.link(first, second)
    writer = os.open(first, os.O_RDWR)
    try:
        os.unlink(first)
        assert read_file(second) == b"1" * 8192  # now in the kernel's pages of the other name
        reader = os.open(second, os.O_RDONLY)
        try:
            os.pwrite(writer, b"2" * 8192, 0)
            os.fsync(writer)
            assert os.pread(reader, 8192, 0) == b"2" * 8192
        finally:
            os.close(reader)
        assert read_file(second) == b"2" * 8192
    finally:
        os.close(writer)
    assert read_file(second) == b"2" * 8192


# --- attributes -------------------------------------------------------------------------------------


def test_chmod_and_chown(mnt):
    path = mnt / "f"
    write_file(path, b"x", mode=0o644)
    before = os.stat(path)
    os.chmod(path, 0o4751)
    after = os.stat(path)
    assert stat.S_IMODE(after.st_mode) == 0o4751
    assert stat.S_ISREG(after.st_mode)
    assert after.st_ctime_ns >= before.st_ctime_ns
    os.chown(path, 1000, 2000)
    owned = os.stat(path)
    assert (owned.st_uid, owned.st_gid) == (1000, 2000)
    assert stat.S_IMODE(owned.st_mode) == 0o751  # a new owner drops set-user-id, as ext4 does
    os.chown(path, -1, 3000)
    assert (os.stat(path).st_uid, os.stat(path).st_gid) == (1000, 3000)
    os.chown(path, 4000, -1)
    assert (os.stat(path).st_uid, os.stat(path).st_gid) == (4000, 3000)
    os.mkdir(mnt / "d", 0o700)
    os.chmod(mnt / "d", 0o1777)
    assert os.stat(mnt / "d").st_mode == stat.S_IFDIR | 0o1777
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fchmod(fd, 0o600)
        os.fchown(fd, 5, 6)
        assert (stat.S_IMODE(os.fstat(fd).st_mode), os.fstat(fd).st_uid, os.fstat(fd).st_gid) == (0o600, 5, 6)
    finally:
        os.close(fd)


def test_utimens_exact_now_and_omit(mnt):
    path = mnt / "f"
    write_file(path, b"x")
    os.utime(path, ns=(1_000_000_000_111, 1_234_567_890_123_456_789))
    result = os.stat(path)
    assert result.st_atime_ns == 1_000_000_000_111
    assert result.st_mtime_ns == 1_234_567_890_123_456_789

    utimensat(path, (0, UTIME_OMIT), (42, 7))  # atime left alone
    result = os.stat(path)
    assert result.st_atime_ns == 1_000_000_000_111
    assert result.st_mtime_ns == 42 * 10**9 + 7

    utimensat(path, (5, 5), (0, UTIME_OMIT))  # mtime left alone
    result = os.stat(path)
    assert result.st_atime_ns == 5 * 10**9 + 5
    assert result.st_mtime_ns == 42 * 10**9 + 7

    before = time.time_ns()
    utimensat(path, (0, UTIME_OMIT), (0, UTIME_NOW))
    after = time.time_ns()
    result = os.stat(path)
    assert result.st_atime_ns == 5 * 10**9 + 5
    assert before - 10**9 <= result.st_mtime_ns <= after + 10**9

    os.utime(path, ns=(7, 8))
    os.utime(path)  # both now
    result = os.stat(path)
    assert result.st_atime_ns > 10**18 and result.st_mtime_ns > 10**18


def test_nanosecond_mtime_survives_a_remount(make_mount):
    mount = make_mount(worker=False)
    path = mount.mnt / "f"
    write_file(path, b"x")
    os.mkdir(mount.mnt / "d")
    os.utime(path, ns=(1_111_111_111_222_222_222, 1_234_567_890_123_456_789))
    os.utime(mount.mnt / "d", ns=(5, 999_999_999))
    assert os.stat(path).st_mtime_ns == 1_234_567_890_123_456_789
    mount.unmount()
    mount.start_fuse()
    assert os.stat(path).st_mtime_ns == 1_234_567_890_123_456_789
    assert os.stat(path).st_atime_ns == 1_111_111_111_222_222_222
    assert os.stat(mount.mnt / "d").st_mtime_ns == 999_999_999


def test_write_updates_mtime(mnt):
    path = mnt / "f"
    write_file(path, b"x")
    os.utime(path, ns=(10**9, 10**9))
    with open(path, "ab") as f:
        f.write(b"more")
    assert os.stat(path).st_mtime_ns > 10**18


# --- extended attributes ------------------------------------------------------------------------------


def test_xattrs(mnt):
    path = mnt / "f"
    write_file(path, b"")
    assert errno_of(os.getxattr, path, "user.missing") == errno.ENODATA
    os.setxattr(path, "user.colour", b"blue")
    assert os.getxattr(path, "user.colour") == b"blue"
    assert errno_of(os.setxattr, path, "user.colour", b"red", XATTR_CREATE) == errno.EEXIST
    assert errno_of(os.setxattr, path, "user.shape", b"round", XATTR_REPLACE) == errno.ENODATA
    os.setxattr(path, "user.colour", b"red", XATTR_REPLACE)
    os.setxattr(path, "user.shape", b"\x00\xffbinary\x00", XATTR_CREATE)
    os.setxattr(path, "user.empty", b"")
    assert os.getxattr(path, "user.colour") == b"red"
    assert os.getxattr(path, "user.shape") == b"\x00\xffbinary\x00"
    assert os.getxattr(path, "user.empty") == b""
    assert sorted(os.listxattr(path)) == ["user.colour", "user.empty", "user.shape"]
    os.removexattr(path, "user.colour")
    assert errno_of(os.removexattr, path, "user.colour") == errno.ENODATA
    assert errno_of(os.getxattr, path, "user.colour") == errno.ENODATA
    assert sorted(os.listxattr(path)) == ["user.empty", "user.shape"]

    os.mkdir(mnt / "d")
    os.setxattr(mnt / "d", "user.on-dir", b"yes")
    assert os.listxattr(mnt / "d") == ["user.on-dir"]
    assert os.listxattr(path) != os.listxattr(mnt / "d")


def test_xattr_size_limits(mnt):
    path = mnt / "f"
    write_file(path, b"")
    big = os.urandom(64 * 1024)
    os.setxattr(path, "user.big", big)
    assert os.getxattr(path, "user.big") == big
    # Linux refuses a value over XATTR_SIZE_MAX (64 KiB) with E2BIG before any filesystem sees it
    assert errno_of(os.setxattr, path, "user.bigger", big + b"x") == errno.E2BIG
    assert errno_of(os.getxattr, path, "user.bigger") == errno.ENODATA
    name255 = "user." + "n" * 250
    os.setxattr(path, name255, b"v")
    assert os.getxattr(path, name255) == b"v"
    assert errno_of(os.setxattr, path, "user." + "n" * 251, b"v") == errno.ERANGE
    assert sorted(os.listxattr(path)) == sorted(["user.big", name255])


def test_posix_acls_are_refused_not_faked(mnt):
    path = mnt / "f"
    write_file(path, b"")
    acl = (b"\x02\x00\x00\x00" + b"\x01\x00\x06\x00\xff\xff\xff\xff"
           + b"\x04\x00\x04\x00\xff\xff\xff\xff" + b"\x20\x00\x04\x00\xff\xff\xff\xff")
    assert errno_of(os.setxattr, path, "system.posix_acl_access", acl) == errno.EOPNOTSUPP


# --- the filesystem as a whole ---------------------------------------------------------------------------


def test_statfs_reports_huge_capacity_and_counts_used_bytes(make_mount):
    mount = make_mount(worker=False)
    before = os.statvfs(mount.mnt)
    assert before.f_blocks * before.f_frsize >= 2**50
    assert before.f_bavail == before.f_bfree
    assert before.f_namemax == 255
    used_before = (before.f_blocks - before.f_bfree) * before.f_frsize
    write_file(mount.mnt / "ten", os.urandom(10 * MIB))
    mount.unmount()  # zero counts 'used' at mount and every few seconds: a remount is the deterministic way
    mount.start_fuse()
    after = os.statvfs(mount.mnt)
    used_after = (after.f_blocks - after.f_bfree) * after.f_frsize
    assert after.f_blocks == before.f_blocks
    assert 10 * MIB <= used_after - used_before <= 10 * MIB + 4096
    assert after.f_bavail == after.f_bfree
    assert after.f_ffree < before.f_ffree


def test_fsync_and_fdatasync_succeed(mnt):
    path = mnt / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"durable")
        os.fsync(fd)
        os.write(fd, b" more")
        os.fdatasync(fd)
        assert os.pread(fd, 100, 0) == b"durable more"
    finally:
        os.close(fd)
    directory = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


# --- names ---------------------------------------------------------------------------------------------


def test_names_are_arbitrary_bytes(mnt):
    base = os.fsencode(mnt)
    names = [b"\xff\xfe", b"a\nb", b"caf\xc3\xa9", b"caf\xe9", b" lead and trail ", b"-dash", b"tab\there",
             b"\x01\x7f"]
    for i, name in enumerate(names):
        write_file(base + b"/" + name, b"content %d" % i)
    assert sorted(os.listdir(base)) == sorted(names)
    for i, name in enumerate(names):
        assert read_file(base + b"/" + name) == b"content %d" % i
    os.mkdir(base + b"/dir\xff")
    os.rename(base + b"/\xff\xfe", base + b"/dir\xff/\xfe\xff")
    assert os.listdir(base + b"/dir\xff") == [b"\xfe\xff"]
    assert read_file(base + b"/dir\xff/\xfe\xff") == b"content 0"
    os.unlink(base + b"/a\nb")
    assert b"a\nb" not in os.listdir(base)
    assert errno_of(os.stat, base + b"/a\nb") == errno.ENOENT


def test_name_length_limit(mnt):
    longest = "n" * 255
    write_file(mnt / longest, b"ok")
    assert read_file(mnt / longest) == b"ok"
    assert longest in os.listdir(mnt)
    multibyte = "é" * 127 + "a"  # 255 bytes in UTF-8
    os.mkdir(mnt / multibyte)
    assert multibyte in os.listdir(mnt)
    too_long = "n" * 256
    assert errno_of(os.open, mnt / too_long, os.O_WRONLY | os.O_CREAT, 0o644) == errno.ENAMETOOLONG
    assert errno_of(os.mkdir, mnt / ("é" * 128)) == errno.ENAMETOOLONG
    assert errno_of(os.rename, mnt / longest, mnt / too_long) == errno.ENAMETOOLONG
    assert errno_of(os.symlink, "x", mnt / too_long) == errno.ENAMETOOLONG
    assert errno_of(os.stat, mnt / too_long) == errno.ENAMETOOLONG
    assert sorted(os.listdir(mnt)) == sorted([longest, multibyte])


# --- permissions ----------------------------------------------------------------------------------------

CHILD_AS_NOBODY = r"""
import errno, json, os, sys
dir_fd = int(sys.argv[1])
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
results = {}
def attempt(name, call):
    try:
        call()
        results[name] = "ok"
    except OSError as error:
        results[name] = errno.errorcode[error.errno]
def read(name):
    fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
    os.close(fd)
def create(name):
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dir_fd)
    os.write(fd, b"by nobody")
    os.close(fd)
attempt("read public", lambda: read("public"))
attempt("read secret", lambda: read("secret"))
attempt("write secret", lambda: os.close(os.open("secret", os.O_WRONLY, dir_fd=dir_fd)))
attempt("create in shared", lambda: create("shared/mine"))
attempt("create in locked", lambda: create("locked/mine"))
attempt("mkdir in locked", lambda: os.mkdir("locked/sub", dir_fd=dir_fd))
attempt("unlink in locked", lambda: os.unlink("locked/rootfile", dir_fd=dir_fd))
attempt("chmod secret", lambda: os.chmod("secret", 0o777, dir_fd=dir_fd))
attempt("list private", lambda: os.listdir(os.open("private", os.O_RDONLY | os.O_DIRECTORY, dir_fd=dir_fd)))
print(json.dumps(results))
"""


def test_default_permissions_are_enforced_for_other_users(mnt):
    import json
    write_file(mnt / "public", b"anyone", mode=0o644)
    write_file(mnt / "secret", b"root only", mode=0o600)
    os.mkdir(mnt / "shared")
    os.chmod(mnt / "shared", 0o777)
    os.mkdir(mnt / "locked", 0o755)
    write_file(mnt / "locked" / "rootfile", b"")
    os.mkdir(mnt / "private", 0o700)
    os.chmod(mnt / "secret", 0o600)  # whatever the umask did
    assert os.stat(mnt / "secret").st_uid == 0
    # The child reaches the mount through an inherited descriptor: the test's
    # temporary folder above the mountpoint is not open to other users.
    dir_fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        result = subprocess.run([sys.executable, "-c", CHILD_AS_NOBODY, str(dir_fd)], pass_fds=(dir_fd,),
                                capture_output=True, text=True, timeout=60)
    finally:
        os.close(dir_fd)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "read public": "ok",
        "read secret": "EACCES",
        "write secret": "EACCES",
        "create in shared": "ok",
        "create in locked": "EACCES",
        "mkdir in locked": "EACCES",
        "unlink in locked": "EACCES",
        "chmod secret": "EPERM",
        "list private": "EACCES",
    }
    made = os.stat(mnt / "shared" / "mine")
    assert (made.st_uid, made.st_gid) == (NOBODY, NOBODY)
    assert read_file(mnt / "shared" / "mine") == b"by nobody"
    assert os.listdir(mnt / "locked") == ["rootfile"]
    assert stat.S_IMODE(os.stat(mnt / "secret").st_mode) == 0o600


# --- persistence -----------------------------------------------------------------------------------------


def test_everything_survives_a_remount(make_mount):
    mount = make_mount(worker=False, chunkSize="64KiB")
    mnt = mount.mnt
    big = os.urandom(3 * SMALL_CHUNK + 999)
    os.makedirs(mnt / "a" / "b")
    write_file(mnt / "a" / "b" / "big", big, mode=0o600)
    os.chmod(mnt / "a" / "b" / "big", 0o640)
    os.chown(mnt / "a" / "b" / "big", 123, 456)
    os.chmod(mnt / "a", 0o711)
    write_file(mnt / "plain", b"plain text")
    os.link(mnt / "plain", mnt / "a" / "plain-link")
    os.symlink("a/b/big", mnt / "sym")
    os.setxattr(mnt / "plain", "user.kept", b"value")
    os.setxattr(mnt / "a", "user.dir", b"dirvalue")
    fd = os.open(mnt / "sparse", os.O_WRONLY | os.O_CREAT, 0o644)
    os.pwrite(fd, b"end", 10 * SMALL_CHUNK)
    os.close(fd)
    os.utime(mnt / "plain", ns=(123, 456_789))
    expected = {name: os.lstat(mnt / name) for name in
                ("a", "a/b", "a/b/big", "plain", "a/plain-link", "sym", "sparse")}

    mount.unmount()
    assert not zero_mounted(mnt)
    mount.start_fuse()

    assert read_file(mnt / "a" / "b" / "big") == big
    assert read_file(mnt / "plain") == b"plain text"
    assert read_file(mnt / "a" / "plain-link") == b"plain text"
    assert os.readlink(mnt / "sym") == "a/b/big"
    assert read_file(mnt / "sym") == big
    assert os.getxattr(mnt / "plain", "user.kept") == b"value"
    assert os.getxattr(mnt / "a", "user.dir") == b"dirvalue"
    assert read_file(mnt / "sparse") == bytes(10 * SMALL_CHUNK) + b"end"
    for name, old in expected.items():
        new = os.lstat(mnt / name)
        for field in ("st_ino", "st_mode", "st_uid", "st_gid", "st_nlink", "st_size", "st_mtime_ns"):
            assert getattr(new, field) == getattr(old, field), (name, field)
    assert os.stat(mnt / "plain").st_nlink == 2
    assert os.stat(mnt / "plain").st_mtime_ns == 456_789
    assert sorted(os.listdir(mnt)) == ["a", "plain", "sparse", "sym"]
    # and it keeps working
    os.unlink(mnt / "plain")
    assert os.stat(mnt / "a" / "plain-link").st_nlink == 1
    write_file(mnt / "after", b"after remount")
    assert read_file(mnt / "after") == b"after remount"
