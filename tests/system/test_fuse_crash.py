"""kill -9 zero-fuse mid-work: every write that returned survives the restart.

Small chunks (64 KiB) so that files span several chunks and end mid-chunk.
"""

import contextlib
import hashlib
import os

from support import zero_mounted
from workerkit import State, wait_until

from zero.cachedir import CacheDir

CHUNK = 64 * 1024


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_file(path, data: bytes, fsync: bool) -> None:
    with open(path, "wb") as out:
        out.write(data)
        out.flush()
        if fsync:
            os.fsync(out.fileno())


def test_every_write_that_returned_survives_kill_9(make_mount):
    fs = make_mount(worker=False, chunkSize="64KiB")
    expected: dict[str, bytes] = {}

    def put(name: str, data: bytes, fsync: bool) -> None:
        write_file(fs.mnt / name, data, fsync)
        expected[name] = data

    # fsync'd, and only closed, at sizes inside a chunk, on a boundary, across several
    for fsync in (True, False):
        tag = "synced" if fsync else "closed"
        put(f"{tag}-small", os.urandom(1000), fsync)
        put(f"{tag}-boundary", os.urandom(2 * CHUNK), fsync)
        put(f"{tag}-large", os.urandom(5 * CHUNK + 12345), fsync)
    put("empty", b"", False)

    # appended in pieces, each through its own open with O_APPEND
    appended = b""
    for n in range(7):
        piece = os.urandom(20_000 + n)
        with open(fs.mnt / "appended", "ab") as out:
            out.write(piece)
        appended += piece
    expected["appended"] = appended

    # an overwrite in the middle of an existing file, crossing a chunk boundary
    base = bytearray(os.urandom(3 * CHUNK))
    put("overwritten", bytes(base), True)
    patch = os.urandom(5000)
    with open(fs.mnt / "overwritten", "r+b") as out:
        out.seek(CHUNK - 2000)
        out.write(patch)
    base[CHUNK - 2000:CHUNK + 3000] = patch
    expected["overwritten"] = bytes(base)

    # shrunk to mid-chunk after being written
    shrunk = os.urandom(4 * CHUNK)
    put("shrunk", shrunk, True)
    os.truncate(fs.mnt / "shrunk", CHUNK + 77)
    expected["shrunk"] = shrunk[:CHUNK + 77]

    # a sparse file: data after a hole
    tail = os.urandom(3000)
    with open(fs.mnt / "sparse", "wb") as out:
        out.seek(3 * CHUNK + 10)
        out.write(tail)
    expected["sparse"] = bytes(3 * CHUNK + 10) + tail

    # names: a tree, a rename, a delete
    os.makedirs(fs.mnt / "a" / "b")
    put("a/b/deep", os.urandom(CHUNK + 1), False)
    put("before-rename", os.urandom(4000), True)
    os.rename(fs.mnt / "before-rename", fs.mnt / "a" / "renamed")
    expected["a/renamed"] = expected.pop("before-rename")
    write_file(fs.mnt / "deleted", os.urandom(9000), True)
    os.unlink(fs.mnt / "deleted")

    # still open at the kill: appended in pieces, never fsync'd or closed
    still_open = open(fs.mnt / "still-open", "ab", buffering=0)
    open_data = b""
    try:
        for n in range(5):
            piece = os.urandom(30_000 + n)
            assert still_open.write(piece) == len(piece)
            open_data += piece
        expected["still-open"] = open_data

        fs.kill_fuse()
    finally:
        with contextlib.suppress(OSError):
            still_open.close()
    assert not zero_mounted(fs.mnt)

    fs.start_fuse()
    for name, data in expected.items():
        path = fs.mnt / name
        assert os.stat(path).st_size == len(data), name
        assert digest(path.read_bytes()) == digest(data), name
    assert not (fs.mnt / "deleted").exists()
    assert not (fs.mnt / "before-rename").exists()
    assert sorted(os.listdir(fs.mnt / "a")) == ["b", "renamed"]
    top = {name for name in expected if "/" not in name} | {"a"}
    assert set(os.listdir(fs.mnt)) == top

    # and the filesystem keeps working after the recovery
    with open(fs.mnt / "appended", "ab") as out:
        out.write(b"after")
    assert (fs.mnt / "appended").read_bytes() == appended + b"after"
    assert "Recovered from an unclean stop" in fs.fuse_log()


def test_a_second_crash_right_after_recovery(make_mount):
    """Recovery itself leaves a consistent state: crash again at once, nothing changes."""
    fs = make_mount(worker=False, chunkSize="64KiB")
    data = os.urandom(3 * CHUNK + 5)
    out = open(fs.mnt / "f", "wb", buffering=0)
    try:
        assert out.write(data) == len(data)
        fs.kill_fuse()  # the write returned; the file is still open
    finally:
        with contextlib.suppress(OSError):
            out.close()
    fs.start_fuse()
    fs.kill_fuse()
    fs.start_fuse()
    assert digest((fs.mnt / "f").read_bytes()) == digest(data)


def test_close_clears_the_dead_mount_of_a_crashed_zero_fuse(tmp_path):
    """The harness itself: a zero-fuse that died without unmounting leaves a mount that
    os.path.ismount calls absent (stat fails with ENOTCONN); close() must still clear it."""
    from support import ZeroMount
    fs = ZeroMount(tmp_path / "fs")
    try:
        fs.start_fuse()
        fs.fuse.kill()
        fs.fuse.wait()
        # The kernel answers stat from its attribute cache (1 s) until it asks the dead process.
        wait_until(lambda: not os.path.ismount(fs.mnt), 10, "stat of the dead mount to fail")
        assert zero_mounted(fs.mnt)
    finally:
        fs.close()
    assert not zero_mounted(fs.mnt), "close() left the dead mount of a killed zero-fuse behind"


def test_kill_9_with_closes_and_attribute_changes_not_yet_committed(make_mount):
    """Closes, chmod, chown and utimens are committed in batches (zero/fuse/flusher.py).
    Killed with a batch pending: every closed file keeps its bytes and size (the
    create committed its first chunk's row; the reconciler releases the leases and
    restores sizes), what fsync returned for keeps its attributes too, and the
    state is consistent: the worker uploads everything and nothing is left leased."""
    fs = make_mount(worker=False, chunkSize="64KiB")
    fs.unmount()
    fs.env["ZERO_TEST_CLOSE_BATCH_S"] = "600"  # nothing batched is committed before the kill
    fs.start_fuse()
    closed = {f"closed-{n}": os.urandom(n * 3001) for n in range(12)}  # n = 0: an empty file
    for name, data in closed.items():
        write_file(fs.mnt / name, data, fsync=False)
    synced = fs.mnt / "synced"
    write_file(synced, os.urandom(CHUNK + 5), fsync=False)
    os.chmod(synced, 0o600)
    os.utime(synced, ns=(1_000_000_000, 2_000_000_000))
    with open(synced, "rb+") as out:
        os.fsync(out.fileno())
    unsynced_mode = fs.mnt / "closed-3"
    os.chmod(unsynced_mode, 0o640)

    state = State(fs.cache)
    # Sizes are committed with the closes' batch: a size still 0 in the state is a close not yet committed.
    regular_empty = "SELECT count(*) FROM inodes WHERE size = 0 AND mode & 61440 = 32768"  # S_IFREG
    pending_at_kill = state.query(regular_empty)[0][0]
    fs.kill_fuse()
    assert pending_at_kill >= len(closed) - 1, "the closes were committed before the kill: nothing was pending"

    fs.start_fuse()
    for name, data in closed.items():
        path = fs.mnt / name
        assert os.stat(path).st_size == len(data), name
        assert digest(path.read_bytes()) == digest(data), name
    st = os.stat(synced)
    assert (st.st_mode & 0o777, st.st_atime_ns, st.st_mtime_ns) == (0o600, 1_000_000_000, 2_000_000_000)
    assert os.stat(unsynced_mode).st_mode & 0o777 in (0o640, 0o644)  # not fsync'd: either is allowed
    assert state.query("SELECT count(*) FROM chunks WHERE leased = 1")[0][0] == 0
    files = {(ino, idx) for ino, idx, *_ in fs_chunk_files(fs.cache)}
    rows = set(state.query("SELECT ino, idx FROM chunks"))
    assert rows == files, "chunk rows and chunk files disagree after the recovery"

    fs.start_worker()
    fs.zero("sync", str(fs.mnt))
    assert set(state.states()) == {"clean"}
    for name, data in closed.items():
        assert digest((fs.mnt / name).read_bytes()) == digest(data), name


def fs_chunk_files(cache):
    return list(CacheDir(cache).iter_chunk_files())
