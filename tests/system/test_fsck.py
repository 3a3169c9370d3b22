"""zero fsck on copies of one real state: a mount session wrote folders,
files of several chunks, a hard link and a symlink, uploaded everything to
the local remote and evicted part of it. Each test copies that cache and
remote, injects one kind of damage with sqlite3 or by touching files, and
checks that `zero fsck` finds it (exit 4), that `--repair` repairs what is
safe (exit 1) and reports the rest, that fsck is then clean (exit 0), and
that a mount reads back every byte that still exists."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest

from support import EXPECTED_WARNINGS, ZeroMount
from workerkit import KIB, State, drop_caches, object_path, wait_until

CHUNK = 256 * KIB
CONFIG = {"chunkSize": "256KiB", "targetDiskUsage": "2MiB", "metadataBackupInterval": 3600}
FILES = {
    "docs/a.txt": b"hello\n",
    "docs/deep/big.bin": os.urandom(5 * CHUNK + 1000),
    "media/movie.bin": os.urandom(3 * CHUNK),
    "top.txt": b"top level\n" * 100,
}
HARD_LINK = "media/big-link"  # a second name of docs/deep/big.bin


@pytest.fixture(scope="module")
def real_state(tmp_path_factory) -> Path:
    """A filesystem after a real session: everything uploaded, some chunks evicted, unmounted cleanly."""
    root = tmp_path_factory.mktemp("fsck") / "fs"
    mount = ZeroMount(root, **CONFIG)
    try:
        mount.start_worker()
        mount.start_fuse()
        for name, data in FILES.items():
            (mount.mnt / name).parent.mkdir(parents=True, exist_ok=True)
            (mount.mnt / name).write_bytes(data)
        os.link(mount.mnt / "docs/deep/big.bin", mount.mnt / HARD_LINK)
        os.symlink("docs/a.txt", mount.mnt / "link-to-a")
        (mount.mnt / "empty-dir").mkdir()
        mount.zero("sync", str(mount.mnt), timeout=120)
        state = State(mount.cache)
        wait_until(lambda: {"remote", "clean"} <= set(state.states()) and not state.dirty_chunk_files(), 60,
                   "some chunks evicted, the rest clean")
        # The tests need big.bin with a chunk in each state, and clean chunks of movie.bin and
        # top.txt. Uploads of different files overlap, so which chunks eviction took is
        # timing; instead evict everything, then read back one chunk of each (the last:
        # nothing after it to prefetch) into a cache that holds them.
        assert mount.stop_worker() == 0
        mount.config_path.write_text(mount.config_path.read_text().replace("targetDiskUsage: 2MiB",
                                                                           "targetDiskUsage: 1KiB"))
        mount.start_worker()
        wait_until(lambda: set(state.states()) == {"remote"}, 60, "the worker to evict every chunk")
        assert mount.stop_worker() == 0
        mount.config_path.write_text(mount.config_path.read_text().replace("targetDiskUsage: 1KiB",
                                                                           "targetDiskUsage: 2MiB"))
        mount.start_worker()
        for name in ("docs/deep/big.bin", "media/movie.bin", "top.txt"):
            path = mount.mnt / name
            last = (len(FILES[name]) - 1) // CHUNK
            drop_caches(path)
            with open(path, "rb") as reader:
                reader.seek(last * CHUNK)
                assert reader.read() == FILES[name][last * CHUNK:]
        inos = {name: os.stat(mount.mnt / name).st_ino for name in ("docs/deep/big.bin", "media/movie.bin", "top.txt")}

        def settled():
            big, movie, top = (set(state.chunks_of(ino).values()) for ino in inos.values())
            return {"clean", "remote"} <= big and "clean" in movie and "clean" in top and not state.dirty_chunk_files()

        try:
            wait_until(settled, 60, "big.bin to have a clean and an evicted chunk, movie.bin and top.txt clean ones")
        except AssertionError as error:
            raise AssertionError(f"{error}; states: {[state.chunks_of(ino) for ino in inos.values()]}") from None
    finally:
        mount.close()
    assert not mount.unexpected_log_lines(EXPECTED_WARNINGS)
    return root


@pytest.fixture
def copy(real_state, tmp_path):
    """A ZeroMount (not started) on a copy of the real state's cache, remote and keys."""
    root = tmp_path / "copy"
    shutil.copytree(real_state, root, symlinks=True, ignore=shutil.ignore_patterns("*.log"))
    mount = ZeroMount(root, **CONFIG)
    yield mount
    mount.close()
    problems = mount.unexpected_log_lines(EXPECTED_WARNINGS)
    assert not problems, "zero logged unexpected warnings or errors:\n" + "\n".join(problems)


def fsck(mount: ZeroMount, *args: str, expect: int):
    result = mount.zero("fsck", str(mount.cache), *args, check=False)
    assert result.returncode == expect, f"zero fsck {' '.join(args)} exited {result.returncode}, not {expect}:\n" \
                                        f"{result.stdout}\n{result.stderr}"
    return result.stdout


def sql(mount: ZeroMount, statement: str, *params):
    database = sqlite3.connect(mount.cache / "state.sqlite3")
    try:
        with database:
            return database.execute(statement, params).fetchall()
    finally:
        database.close()


def ino_of(mount: ZeroMount, path: str) -> int:
    ino = 1
    for name in path.split("/"):
        ino = sql(mount, "SELECT ino FROM dentries WHERE parent = ? AND name = ?", ino, name.encode())[0][0]
    return ino


def chunk_in(mount: ZeroMount, state: str, path: str | None = None) -> tuple[int, int, str]:
    """(ino, idx, object_key) of a chunk in ``state`` (of the file at ``path``)."""
    rows = sql(mount, "SELECT ino, idx, object_key FROM chunks WHERE state = ? ORDER BY ino, idx", state)
    if path is not None:
        rows = [row for row in rows if row[0] == ino_of(mount, path)]
    assert rows, f"the real state has no {state} chunk{' of ' + path if path else ''}"
    return rows[0]


def chunk_file(mount: ZeroMount, ino: int, idx: int) -> Path:
    return mount.cache / "chunks" / f"{ino % 256:02x}" / f"{ino}-{idx}"


def repair_until_clean(mount: ZeroMount, *args: str) -> str:
    said = fsck(mount, "--repair", *args, expect=1)
    assert "repaired" in said
    assert "No problems found." in fsck(mount, expect=0)
    return said


def read_back(mount: ZeroMount, expected: dict[str, bytes]) -> None:
    mount.start_worker()
    mount.start_fuse()
    drop_caches()
    for name, data in expected.items():
        assert (mount.mnt / name).read_bytes() == data, f"{name} does not read back as written"


def test_a_clean_real_state_has_nothing_to_report(copy):
    said = fsck(copy, expect=0)
    assert "No problems found." in said
    assert "objects are where placements say: ok" in said
    assert "problem(s)" not in said and "skipped" not in said


def test_damaged_cache_files_are_repaired_from_the_remote(copy):
    ino, idx, _ = chunk_in(copy, "clean", "docs/deep/big.bin")
    chunk_file(copy, ino, idx).unlink()                                   # a missing chunk file
    other = sql(copy, "SELECT ino, idx FROM chunks WHERE state = 'clean' AND NOT (ino = ? AND idx = ?)", ino, idx)[0]
    os.truncate(chunk_file(copy, *other), 10)                             # a wrong size
    evicted = chunk_in(copy, "remote")
    chunk_file(copy, *evicted[:2]).write_bytes(b"stale")                  # a file of an evicted chunk
    orphan = copy.cache / "chunks" / "e7" / "999-0"
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"no row names me")                                # an orphan file

    said = fsck(copy, expect=4)
    assert f"/docs/deep/big.bin (and 1 other name(s)), chunk {idx}" in said
    assert "its cache file is missing" in said and "--repair would mark it evicted" in said
    assert "holds 10 bytes, but" in said
    assert f"{evicted[0]}-{evicted[1]} is still there" in said
    assert f"{orphan} belongs to no chunk" in said
    assert orphan.exists()  # no --repair: nothing changed

    repair_until_clean(copy)
    assert not orphan.exists()
    assert sql(copy, "SELECT state FROM chunks WHERE ino = ? AND idx = ?", ino, idx) == [("remote",)]
    read_back(copy, {**FILES, HARD_LINK: FILES["docs/deep/big.bin"]})


def test_states_left_mid_move_are_settled(copy):
    uploading = chunk_in(copy, "clean", "media/movie.bin")
    fetching = chunk_in(copy, "remote")
    leased = chunk_in(copy, "clean", "top.txt")
    sql(copy, "UPDATE chunks SET state = 'uploading' WHERE ino = ? AND idx = ?", *uploading[:2])
    sql(copy, "UPDATE chunks SET state = 'fetching' WHERE ino = ? AND idx = ?", *fetching[:2])
    sql(copy, "UPDATE chunks SET leased = 1 WHERE ino = ? AND idx = ?", *leased[:2])

    said = fsck(copy, expect=4)
    start = uploading[1] * CHUNK
    assert f"/media/movie.bin, chunk {uploading[1]} (bytes {start}-{start + CHUNK - 1}) is marked uploading, " \
           "but no worker runs" in said
    assert "is marked being fetched" in said and "/top.txt, chunk 0 (bytes 0-262143) is leased" in said

    repair_until_clean(copy)
    assert sql(copy, "SELECT state FROM chunks WHERE ino = ? AND idx = ?", *uploading[:2]) == [("dirty",)]
    assert sql(copy, "SELECT state FROM chunks WHERE ino = ? AND idx = ?", *fetching[:2]) == [("remote",)]
    read_back(copy, FILES)


def test_dangling_references_are_uploaded_again_or_reported_as_lost(copy):
    unknown_object = chunk_in(copy, "clean", "media/movie.bin")
    sql(copy, "UPDATE chunks SET object_key = 'feedbeef' WHERE ino = ? AND idx = ?", *unknown_object[:2])
    gone_from_remote = chunk_in(copy, "clean", "top.txt")
    object_path(copy.remote, gone_from_remote[2]).unlink()                # the placement is wrong now
    lost = chunk_in(copy, "remote", "docs/deep/big.bin")
    object_path(copy.remote, lost[2]).unlink()                            # an evicted chunk's only copy
    lost_start = lost[1] * CHUNK
    lost_end = min(lost_start + CHUNK, len(FILES["docs/deep/big.bin"]))

    said = fsck(copy, expect=4)
    assert "names object feedbeef, which the state does not know" in said
    assert f"the state says remote 'local' holds object {gone_from_remote[2]}, but its listing does not have it" \
        in said
    assert "--repair would mark it dirty: the worker uploads the cache file again" in said
    assert "Data that exists nowhere" in said
    assert f"/docs/deep/big.bin or /media/big-link: bytes {lost_start}-{lost_end - 1}" in said

    said = fsck(copy, "--repair", expect=5)                               # 1 | 4: the lost bytes are left
    assert "left as it is; --repair --accept-loss would make them a hole" in said
    assert sql(copy, "SELECT state FROM chunks WHERE ino = ? AND idx = ?", *unknown_object[:2]) == [("dirty",)]
    repair_until_clean(copy, "--accept-loss")
    assert sql(copy, "SELECT count(*) FROM chunks WHERE ino = ? AND idx = ?", *lost[:2]) == [(0,)]
    big = bytearray(FILES["docs/deep/big.bin"])
    big[lost_start:lost_end] = bytes(lost_end - lost_start)
    read_back(copy, {**FILES, "docs/deep/big.bin": bytes(big)})


def test_namespace_damage_is_repaired_and_orphans_with_data_go_to_lost_and_found(copy):
    big, top, docs = ino_of(copy, "docs/deep/big.bin"), ino_of(copy, "top.txt"), ino_of(copy, "docs")
    sql(copy, "UPDATE inodes SET nlink = 5 WHERE ino = ?", big)           # wrong link counts
    sql(copy, "UPDATE inodes SET nlink = 9 WHERE ino = 1")
    sql(copy, "UPDATE inodes SET nlink = 1 WHERE ino = ?", docs)
    sql(copy, "DELETE FROM dentries WHERE ino = ?", top)                  # an orphan with data
    new_inode = "INSERT INTO inodes (mode, uid, gid, nlink, size, atime_ns, mtime_ns, ctime_ns, rdev) " \
                "VALUES (?, 0, 0, ?, 0, 0, 0, 0, 0)"
    sql(copy, new_inode, stat.S_IFREG | 0o644, 0)                         # deleted while open, never purged
    sql(copy, new_inode, stat.S_IFREG | 0o644, 1)                         # no name, no data
    sql(copy, "INSERT INTO dentries (parent, name, ino) VALUES (1, ?, 4242)", b"nowhere")  # a dangling entry
    sql(copy, "INSERT INTO dentries (parent, name, ino) VALUES (4343, ?, ?)", b"lost-parent", big)
    sql(copy, new_inode, stat.S_IFDIR | 0o755, 2)                         # two directories in a loop
    sql(copy, new_inode, stat.S_IFDIR | 0o755, 3)
    loop_a, loop_b = (row[0] for row in sql(copy, "SELECT ino FROM inodes ORDER BY ino DESC LIMIT 2")[::-1])
    sql(copy, "INSERT INTO dentries (parent, name, ino) VALUES (?, ?, ?)", loop_a, b"b", loop_b)
    sql(copy, "INSERT INTO dentries (parent, name, ino) VALUES (?, ?, ?)", loop_b, b"a", loop_a)

    said = fsck(copy, expect=4)
    assert "/docs/deep/big.bin: link count 5, but the entries make it 3" in said  # with the entry in 4343
    assert "/: link count 9, but the entries make it 5" in said
    assert "/docs: link count 1, but the entries make it 3" in said
    assert f"inode {top} (a file, 1000 bytes) has data but no name" in said
    assert "was deleted while open and never purged" in said and "has no name and holds nothing" in said
    assert "/nowhere names inode 4242, which does not exist" in said
    assert "is in inode 4343, which does not exist" in said
    assert "hang in a loop that the root does not reach" in said

    repair_until_clean(copy)
    moved = {name: data for name, data in FILES.items() if name != "top.txt"}
    read_back(copy, {**moved, f"lost+found/#{top}": FILES["top.txt"], HARD_LINK: FILES["docs/deep/big.bin"]})
    assert os.stat(copy.mnt / "docs/deep/big.bin").st_nlink == 2
    assert os.stat(copy.mnt).st_nlink == 2 + sum(1 for e in os.scandir(copy.mnt) if e.is_dir(follow_symlinks=False))
    assert sorted(os.listdir(copy.mnt / "lost+found")) == sorted([f"#{top}", f"#{loop_a}"])
    assert os.listdir(copy.mnt / "lost+found" / f"#{loop_a}") == ["b"]


def test_fsck_refuses_a_cache_in_use_and_changes_nothing(copy):
    copy.start_worker()
    copy.start_fuse()
    result = copy.zero("fsck", str(copy.cache), "--repair", check=False)
    assert result.returncode == 8
    assert f"zero-fuse (pid {copy.fuse.pid}) and zero-worker (pid {copy.worker.pid}) are using" in result.stderr
    assert "Unmount it" in result.stderr and "Checking" not in result.stdout


def test_an_unreachable_remote_is_skipped_not_passed(copy):
    copy.remote.rename(copy.root / "remote-elsewhere")                    # say, its drive is not mounted
    said = fsck(copy, expect=8)
    assert "objects are where placements say: skipped: remote 'local' skipped: it could not be listed" in said
    assert "No problems found in what could be checked." in said
    said = fsck(copy, "--no-remote", expect=0)
    assert "objects are where placements say: skipped: skipped on request (--no-remote)" in said
