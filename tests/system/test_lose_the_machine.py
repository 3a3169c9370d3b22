"""Lose the machine, lose nothing: write a tree (an rsync of the Python
standard library, a 300 MiB file, links, xattrs, odd names) into zero over a
real S3 server (moto on 127.0.0.1), let the metadata reach the remote, kill -9
both processes and delete the cache folder; then on new folders with only the
config and the recovery key (then only the passphrase) `zero restore`, mount,
and find the tree identical: contents, modes, mtimes, xattrs, link counts,
symlinks, odd names."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from support import EXPECTED_WARNINGS, ZeroMount
from workerkit import State, sha256_of, wait_until
from zero.state import changelog

MIB = 1024 * 1024
STDLIB = Path(os.__file__).parent
PASSPHRASE = "a long passphrase for the test"
ODD_NAMES = ["with space", "caf\u00e9", "new\nline", os.fsdecode(b"bytes-\xff\xfe"), "-starts-with-dash", "x" * 255]


BIG_MIB = 300


def build_source(folder: Path) -> None:
    """What the user had: the stdlib, a big file, links, odd names (on a local disk, to diff against)."""
    folder.mkdir()
    subprocess.run(["rsync", "-a", "--exclude", "site-packages", "--exclude", "__pycache__", "--exclude",
                    "config-*", f"{STDLIB}/", str(folder)], check=True, timeout=300)
    block = os.urandom(4 * MIB + 1)  # an odd length: no two chunks of the big file are the same
    with open(folder / "big.bin", "wb") as big:
        for number in range(BIG_MIB // 4):
            big.write(number.to_bytes(8, "little") + block[8:])
    os.symlink("json/__init__.py", folder / "link-to-json")
    os.symlink("/nonexistent/dangling", folder / "dangling")
    odd = folder / "odd"
    odd.mkdir(mode=0o750)
    for number, name in enumerate(ODD_NAMES):
        (odd / name).write_bytes(f"file {number}\n".encode())
    os.chmod(odd / "with space", 0o600)


def add_links_and_xattrs(tree: Path) -> None:
    """What cp -a cannot bring from a local disk: made in the mount itself."""
    os.link(tree / "big.bin", tree / "big-hardlink")
    os.link(tree / "odd" / "caf\u00e9", tree / "json" / "caf\u00e9-link")
    os.setxattr(tree / "big.bin", "user.origin", b"lose-the-machine")
    os.setxattr(tree / "odd", "user.binary", bytes(range(256)))


def describe(tree: Path) -> dict[str, tuple]:
    """Everything that must survive, per path: type and mode, size, mtime, link count, xattrs, link target."""
    found = {}
    for folder, dirs, files in os.walk(tree):
        for name in [*dirs, *files]:
            path = Path(folder) / name
            st = os.lstat(path)
            xattrs = {} if stat.S_ISLNK(st.st_mode) else {
                attr: os.getxattr(path, attr) for attr in os.listxattr(path)}
            target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
            found[str(path.relative_to(tree))] = (st.st_mode, st.st_size if not stat.S_ISDIR(st.st_mode) else 0,
                                                  st.st_mtime_ns, st.st_nlink, xattrs, target)
    return found


def diff(source: Path, tree: Path) -> str:
    result = subprocess.run(["diff", "-r", "--no-dereference", str(source), str(tree)], capture_output=True,
                            timeout=900)
    return result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")


def local_remote(folder: Path) -> dict:
    return {"name": "local", "type": "local", "path": str(folder)}


def restored_mount(root: Path, remote: dict, *restore_args: str, **config) -> ZeroMount:
    mount = ZeroMount(root, remotes=[remote], **config)
    result = mount.zero("restore", str(mount.cache), *restore_args, timeout=300)
    assert "Restored filesystem" in result.stdout
    mount.start_worker()
    mount.start_fuse()
    return mount


def restore_forced(mount: ZeroMount, keyfile: Path) -> str:
    """`zero restore --force` with the recovery key into ``mount``'s cache; what it printed."""
    return mount.zero("restore", str(mount.cache), "--recovery-key-file", str(keyfile), "--force", timeout=300).stdout


def assert_fsck_clean(mount: ZeroMount) -> None:
    """A restored state, used and stopped, is consistent with its cache and the remote."""
    mount.close()
    result = mount.zero("fsck", str(mount.cache), check=False)
    assert result.returncode == 0 and "No problems found." in result.stdout, result.stdout + result.stderr


def started_with_key(mounts: list, root: Path, remotes: list, **config) -> tuple[ZeroMount, Path]:
    """A new filesystem mounted with its worker (added to ``mounts``), and its recovery key file."""
    mount = ZeroMount(root, remotes=remotes, **config)
    mounts.append(mount)
    mount.start_worker()
    mount.start_fuse()
    return mount, wait_until(lambda: next(mount.root.glob("recovery-*.key"), None), 30, "the recovery key file")


def close_all(mounts) -> list[str]:
    """Close every mount; the log lines (warnings, errors) nobody expected."""
    problems = []
    for mount in mounts:
        mount.close()
        problems += mount.unexpected_log_lines(EXPECTED_WARNINGS)
    return problems


def test_lose_the_machine(tmp_path, s3):
    source = tmp_path / "source"
    build_source(source)
    remote = s3.remote("s3", s3.bucket())
    mounts = []
    try:
        first = ZeroMount(tmp_path / "first", remotes=[remote], metadataBackupInterval=1)
        mounts.append(first)
        first.start_worker()
        first.start_fuse()
        tree = first.mnt / "tree"
        subprocess.run(["rsync", "-a", f"{source}/", str(tree)], check=True, timeout=600)
        add_links_and_xattrs(tree)
        with open(tree / "json" / "decoder.py", "rb+") as fsynced:  # part of it fsynced: data in the remote
            os.fsync(fsynced.fileno())
        expected = describe(tree)
        keyfile = wait_until(lambda: next(first.root.glob("recovery-*.key"), None), 30, "the recovery key file")
        exported = first.zero("key", "export", str(first.cache)).stdout
        assert keyfile.read_text().strip() in exported
        # The rest: everything uploaded, then a journal segment covering every change.
        first.zero("sync", str(first.mnt), timeout=600)
        state = State(first.cache)
        wait_until(lambda: state.query("SELECT count(*) FROM changelog")[0][0] == 0
                   and not state.dirty_chunk_files(), 120, "a metadata segment covering every change")

        first.kill_worker()
        first.kill_fuse()
        shutil.rmtree(first.cache)
        saved_key = tmp_path / "paper-copy.key"
        shutil.copy(keyfile, saved_key)
        keyfile.unlink()  # the machine is gone; only the paper copy is left

        # A new machine with only the config's remotes and the recovery key.
        # The lost machine never released its writer lease: taking over is a deliberate --force.
        second = restored_mount(tmp_path / "second", remote, "--recovery-key-file", str(saved_key), "--force")
        mounts.append(second)
        assert describe(second.mnt / "tree") == expected
        assert diff(source, second.mnt / "tree").count("\n") == 2  # only the two hard links made in the mount
        # Seal the keys with a passphrase instead (no data re-encrypted); the next machine needs only that.
        second.env["ZERO_NEW_PASSPHRASE"] = PASSPHRASE
        second.zero("key", "change-passphrase", str(second.cache))
        second.close()

        third = restored_mount(tmp_path / "third", remote, passphrase=PASSPHRASE)
        mounts.append(third)
        assert describe(third.mnt / "tree") == expected
        assert sha256_of(third.mnt / "tree" / "big.bin") == sha256_of(source / "big.bin")
        listing = third.zero("snapshots", str(third.cache)).stdout
        assert "snapshot" in listing and "the newest point" in listing
        assert_fsck_clean(third)
    finally:
        problems = close_all(mounts)
    assert not problems, "zero logged unexpected warnings or errors:\n" + "\n".join(problems)


def first_machine(tmp_path: Path, mounts: list, **config) -> tuple[ZeroMount, Path]:
    """A mount with its worker under <tmp_path>/first, and its recovery key file once written."""
    first = ZeroMount(tmp_path / "first", **config)
    mounts.append(first)
    first.start_worker()
    first.start_fuse()
    return first, wait_until(lambda: next(first.root.glob("recovery-*.key"), None), 30, "the recovery key file")


def test_what_fsync_returned_for_survives_a_kill_right_after_it(tmp_path):
    """fsync with fsyncWaitsForUpload covers the data and the metadata naming it: kill -9 both
    processes the moment fsync returns, lose the cache, restore: the file is there, whole. The
    periodic backup is set to an hour, so only fsync's own request can have sent the metadata."""
    mounts = []
    try:
        first, keyfile = first_machine(tmp_path, mounts, metadataBackupInterval=3600)
        (first.mnt / "projects" / "thesis").mkdir(parents=True)
        data = os.urandom(3 * MIB + 123)
        fd = os.open(first.mnt / "projects" / "thesis" / "chapter-1.tex", os.O_WRONLY | os.O_CREAT, 0o644)
        assert os.write(fd, data) == len(data)
        os.fsync(fd)
        first.kill_worker()  # the moment fsync returned
        first.kill_fuse()
        with contextlib.suppress(OSError):
            os.close(fd)  # on a dead mount
        shutil.rmtree(first.cache)
        second = restored_mount(tmp_path / "second", local_remote(first.remote), "--recovery-key-file",
                                str(keyfile), "--force")
        mounts.append(second)
        assert (second.mnt / "projects" / "thesis" / "chapter-1.tex").read_bytes() == data
        assert_fsck_clean(second)
    finally:
        problems = close_all(mounts)
    assert not problems, "zero logged unexpected warnings or errors:\n" + "\n".join(problems)


def test_bytes_never_uploaded_read_as_an_error_after_the_machine_is_lost_not_as_zeros(tmp_path):
    """A file grows past its uploaded end, and zero-worker has not uploaded that yet
    (uploadDelay: an hour) when a metadata segment records the new size; then the machine
    is lost. The restore had the size, and for the last chunk its old, shorter object, so
    the new end read back as zeros, silently, and fsck said the state was clean. Those
    bytes are lost, and now say so: the restore counts them, reading them fails with EIO,
    and fsck names the file and the byte range (exit 4)."""
    mounts = []
    try:
        first, keyfile = first_machine(tmp_path, mounts, metadataBackupInterval=1, uploadDelay=3600)
        head, tail = os.urandom(4 * MIB + 1000), os.urandom(100_000)  # the append changes chunk 1
        path = first.mnt / "photos" / "growing.raw"
        path.parent.mkdir()
        write_synced(path, head)  # uploaded, and its metadata with it
        with open(path, "ab") as out:
            out.write(tail)  # a new chunk, left for the upload delay
        state = State(first.cache)
        ino = os.stat(path).st_ino
        wait_until(lambda: state.query("SELECT size FROM inodes WHERE ino = ?", ino) == [(len(head) + len(tail),)],
                   30, "zero-fuse to commit the new size")
        backed_up_metadata(first)
        assert state.query("SELECT state FROM chunks WHERE idx = 1") == [("dirty",)], "the tail was uploaded"
        first.kill_worker()
        first.kill_fuse()
        shutil.rmtree(first.cache)

        second = ZeroMount(tmp_path / "second", remotes=[local_remote(first.remote)])
        mounts.append(second)
        restored = restore_forced(second, keyfile)
        assert "1 chunk(s) of 1 file(s) had not been uploaded" in restored, restored
        second.start_worker()
        second.start_fuse()
        again = second.mnt / "photos" / "growing.raw"
        assert os.stat(again).st_size == len(head) + len(tail)
        with open(again, "rb") as copy:
            assert copy.read(4 * MIB) == head[:4 * MIB]
            with pytest.raises(OSError) as error:
                copy.read()
        assert error.value.errno == errno.EIO, f"the lost end read back as {error.value!r}"
        wait_until(lambda: "was changed on the machine that wrote it and not uploaded" in second.worker_log(), 30,
                   "the worker to say why the read failed")
        status = second.zero("status", str(second.cache)).stdout
        assert "LOST:       1 chunk(s) of 1 file(s)" in status, status
        assert json.loads(second.zero("status", str(second.cache), "--json").stdout)["never_uploaded"] == \
            {"chunks": 1, "files": 1}
        second.close()
        fsck = second.zero("fsck", str(second.cache), check=False)
        assert fsck.returncode == 4, fsck.stdout + fsck.stderr
        assert f"photos/growing.raw, chunk 1 (bytes {4 * MIB}-" in fsck.stdout, fsck.stdout
    finally:
        for mount in mounts:
            mount.close()


def test_a_folder_fsync_makes_its_renames_links_and_unlinks_restorable(tmp_path):
    """Write a new version, fsync it, rename it over the old, fsync the folder: the way
    editors and databases replace a file safely. fsync of a folder returned without a
    metadata segment (a red-team run, 3 of 3): after losing the machine the restore had
    the old file, the temporary one, an unlinked one and no hard link."""
    mounts = []
    try:
        first, keyfile = first_machine(tmp_path, mounts, metadataBackupInterval=3600)
        folder = first.mnt / "docs"
        folder.mkdir()
        old, new = os.urandom(40_000), os.urandom(40_000)
        write_synced(folder / "config.json", old)
        write_synced(folder / "gone", b"to be deleted")
        write_synced(folder / "config.json.tmp", new)
        os.rename(folder / "config.json.tmp", folder / "config.json")
        os.link(folder / "config.json", folder / "config-link")
        os.unlink(folder / "gone")
        fsync_path(folder)
        first.kill_worker()  # the moment the folder's fsync returned
        first.kill_fuse()
        shutil.rmtree(first.cache)
        second = restored_mount(tmp_path / "second", local_remote(first.remote), "--recovery-key-file",
                                str(keyfile), "--force")
        mounts.append(second)
        restored = second.mnt / "docs"
        assert sorted(os.listdir(restored)) == ["config-link", "config.json"]
        assert (restored / "config.json").read_bytes() == new
        assert os.stat(restored / "config.json").st_ino == os.stat(restored / "config-link").st_ino
    finally:
        problems = close_all(mounts)
    assert not problems, "zero logged unexpected warnings or errors:\n" + "\n".join(problems)


def test_a_segment_stored_again_after_a_worker_crash_is_the_one_restored(tmp_path):
    """The worker stores journal N on both remotes and dies before recording it. Meanwhile a
    rename is fsynced. The restarted worker stores N again, now with the rename, while one
    remote is away, and fsync returns. Losing the machine then, a restore that read the first
    copy of N from the remote that was away lost the fsynced rename."""
    away, near = tmp_path / "remote-away", tmp_path / "remote-near"
    remotes = [local_remote(away) | {"name": "away"}, local_remote(near) | {"name": "near"}]
    paused = tmp_path / "paused"
    mounts, fsyncs = [], []
    try:
        first = ZeroMount(tmp_path / "first", remotes=remotes, metadataBackupInterval=3600, faultInTimeout=60)
        mounts.append(first)
        first.start_worker()
        first.start_fuse()
        keyfile = wait_until(lambda: next(first.root.glob("recovery-*.key"), None), 30, "the recovery key file")
        early, second = os.urandom(100_000), os.urandom(100_000)
        write_synced(first.mnt / "early", early)
        assert first.stop_worker() == 0, first.worker_log()[-3000:]

        # The segment fsync asks for reaches both remotes; the worker stops before recording it.
        worker = first.start_worker(env={"ZERO_TEST_PAUSE_AT": "meta.stored", "ZERO_TEST_PAUSE_FILE": str(paused)})
        fsyncs.append(background(write_synced, first.mnt / "second", second))
        wait_until(lambda: paused.exists() or worker.poll() is not None, 60, "the worker to store a segment")
        assert worker.poll() is None, first.worker_log()[-3000:]
        # A rename, fsynced: its request waits for the worker.
        os.rename(first.mnt / "early", first.mnt / "renamed")
        fsyncs.append(background(fsync_path, first.mnt / "renamed"))
        state = State(first.cache)
        wait_until(lambda: state.query("SELECT count(*) FROM backup_requests")[0][0] == 2, 60,
                   "the rename's fsync to ask for a segment")
        first.kill_worker()

        # One remote goes away; the restarted worker stores the segment again on the other.
        away.rename(tmp_path / "remote-away.moved")
        away.write_text("not a folder: this remote cannot be written while the test holds it away\n")
        first.start_worker()
        for thread in fsyncs:
            thread.join(timeout=60)
            assert not thread.is_alive(), "an fsync never returned after the worker's restart"
            assert thread.error is None, f"an fsync failed: {thread.error!r}"

        # The machine is lost right then; the remote that was away is back.
        first.kill_worker()
        first.kill_fuse()
        shutil.rmtree(first.cache)
        away.unlink()
        (tmp_path / "remote-away.moved").rename(away)
        restored = ZeroMount(tmp_path / "restored", remotes=remotes)
        mounts.append(restored)
        restored.zero("restore", str(restored.cache), "--recovery-key-file", str(keyfile), "--force", timeout=300)
        restored.start_worker()
        restored.start_fuse()
        assert sorted(os.listdir(restored.mnt)) == ["renamed", "second"], "an fsynced change was not restored"
        assert (restored.mnt / "renamed").read_bytes() == early
        assert (restored.mnt / "second").read_bytes() == second
    finally:
        for thread in fsyncs:
            thread.join(timeout=60)
        close_all(mounts)


@pytest.mark.parametrize("absence", ["gone", "an empty mountpoint"])
def test_a_restore_without_a_remote_writes_nothing_until_that_remote_is_checked(tmp_path, absence):
    """A red-team run: the first machine saved f2 on remote a only (b was away) and was
    lost; a second machine restored while a was away and b back, so from b alone, and
    went on numbering segments from there, reusing the numbers a held; when a came back,
    a restore read the first machine's segment under one of them and lost what the
    second had fsynced (3 of 3). Now the restored cache writes nothing to the remotes
    until a answers, and then finds it holds newer metadata: a fork, refused.

    A drive that is not mounted leaves its mountpoint, an empty folder that lists as
    empty: without its marker it counts as away too (a review found the restore took
    it for a remote holding nothing)."""
    away, other = tmp_path / "a", tmp_path / "b"
    remotes = [local_remote(away) | {"name": "a"}, local_remote(other) | {"name": "b"}]
    mounts = []

    def put_away(folder: Path) -> None:
        folder.rename(folder.with_name(folder.name + ".away"))
        if absence == "gone":
            folder.write_text("not a folder: this remote is away\n")
        else:
            folder.mkdir()

    def bring_back(folder: Path) -> None:
        folder.rmdir() if folder.is_dir() else folder.unlink()
        folder.with_name(folder.name + ".away").rename(folder)

    try:
        first, keyfile = started_with_key(mounts, tmp_path / "first", remotes, metadataBackupInterval=3600)
        write_synced(first.mnt / "f1", b"on both remotes")
        put_away(other)
        write_synced(first.mnt / "f2", b"on a only")
        first.kill_worker()
        first.kill_fuse()
        shutil.rmtree(first.cache)

        put_away(away)
        bring_back(other)
        second = ZeroMount(tmp_path / "second", remotes=remotes, writerTimeout=4, metadataBackupInterval=1)
        mounts.append(second)
        restored = restore_forced(second, keyfile)
        assert "Restored without a" in restored, restored
        second.start_worker()
        second.start_fuse()
        state = State(second.cache)
        role = lambda: json.loads(state.query("SELECT value FROM meta WHERE key = 'writer_verdict'")[0][0])  # noqa: E731
        wait_until(lambda: role()["role"] == "pending", 30, "the restored worker to wait for remote a")
        assert "did not answer" in role()["message"]
        (second.mnt / "g1").write_bytes(b"written while a was away")
        bring_back(away)
        wait_until(lambda: role()["role"] == "refused", 60, "the worker to find a's newer metadata")
        assert "older than the filesystem in the remotes" in role()["message"]
        # g1 can never be uploaded from here: the unmount says so instead of waiting out faultInTimeout.
        second.unmount()
        assert "it uploads nothing from this cache, because this cache is older" in second.fuse_log(), \
            second.fuse_log()

        third = ZeroMount(tmp_path / "third", remotes=remotes)
        mounts.append(third)
        third.zero("restore", str(third.cache), "--recovery-key-file", str(keyfile), "--force", timeout=300)
        third.start_worker()
        third.start_fuse()
        assert (third.mnt / "f2").read_bytes() == b"on a only"
    finally:
        close_all(mounts)


def backed_up(mount: ZeroMount) -> None:
    """Everything uploaded, and a metadata segment covering every change."""
    mount.zero("sync", str(mount.mnt), timeout=120)
    backed_up_metadata(mount)


def backed_up_metadata(mount: ZeroMount) -> None:
    """A metadata segment covering every change so far, uploaded or not."""
    state = State(mount.cache)
    wait_until(lambda: state.query("SELECT count(*) FROM changelog")[0][0] == 0, 60,
               "a metadata segment covering every change")


def two_remotes(tmp_path: Path) -> tuple[Path, Path, list[dict]]:
    """Local-folder remotes a and b: their folders, and the config's remotes."""
    kept, away = tmp_path / "a", tmp_path / "b"
    return kept, away, [local_remote(kept) | {"name": "a"}, local_remote(away) | {"name": "b"}]


def test_a_newer_point_stays_restorable_after_an_older_one_is_taken_over_and_collected(tmp_path):
    """`restore --at T --take-over` rolls the filesystem back. The snapshots after T that
    retention keeps stay restore points, but the objects only they name have no row in
    the taker's state, and its orphan sweep deleted them (a review): a restore of the
    newer point could no longer read what was written after T.

    Retention keeps one snapshot an hour, so the remotes' files are made two hours
    older before the take-over; remote b, away meanwhile, keeps snapshot 1, which a
    pruned once snapshot 3 landed there."""
    hour = 3600
    kept, away, remotes = two_remotes(tmp_path)
    mounts = []

    def two_hours_pass() -> None:
        for folder in (kept, away):
            for path in folder.rglob("*"):
                st = path.stat()
                os.utime(path, (st.st_atime - 2 * hour, st.st_mtime - 2 * hour))

    try:
        first, keyfile = started_with_key(mounts, tmp_path / "first", remotes, metadataBackupInterval=1)
        (first.mnt / "old.txt").write_bytes(b"before the point\n")
        backed_up(first)  # snapshot 1, on a and b
        then = time.time()
        away.rename(away.with_name("b.away"))
        away.write_text("not a folder: this remote is away\n")
        later = os.urandom(300_000)
        (first.mnt / "later.bin").write_bytes(later)
        backed_up(first)  # a journal on a only, so the next segment is a snapshot
        (first.mnt / "more.txt").write_bytes(b"and more\n")
        backed_up(first)  # snapshot 3 on a
        newer = time.time()
        first.unmount()
        first.stop_worker()
        away.unlink()
        away.with_name("b.away").rename(away)
        two_hours_pass()

        taker = ZeroMount(tmp_path / "taker", remotes=remotes, metadataBackupInterval=1)
        mounts.append(taker)
        taker.zero("restore", str(taker.cache), "--recovery-key-file", str(keyfile), "--at", str(then - 2 * hour),
                   "--take-over", timeout=300)
        taker.start_worker()
        taker.start_fuse()
        assert (taker.mnt / "old.txt").read_bytes() == b"before the point\n"
        assert not (taker.mnt / "later.bin").exists()
        (taker.mnt / "after.txt").write_bytes(b"the taker writes\n")
        backed_up(taker)
        taker.zero("gc", str(taker.cache), "--delete", "--grace", "0", timeout=120)

        back = ZeroMount(tmp_path / "back", remotes=remotes)
        mounts.append(back)
        back.zero("restore", str(back.cache), "--recovery-key-file", str(keyfile), "--at", str(newer - 2 * hour),
                  timeout=300)
        back.start_worker()
        back.start_fuse()
        assert (back.mnt / "later.bin").read_bytes() == later, "the newer point lost what was written after T"
    finally:
        close_all(mounts)


def test_work_redone_after_a_roll_back_is_stored_not_deduplicated_onto_a_collected_object(tmp_path):
    """Decision 106, a red-team run through the mount: a snapshot named the row of an
    object already unused (work.bin, written and deleted); the old line's collector
    then deleted the object. A roll-back to an earlier snapshot adopted that row, the
    same work written again and fsynced was deduplicated onto it, and after the next
    restore it read EIO. A point keeps what was unused for less than a minute before it
    (POINT_MARGIN_S): the object's stamp is moved back past that minute, as the two
    hours are, rather than waited out."""
    hour = 3600
    kept, away, remotes = two_remotes(tmp_path)
    mounts = []

    def in_state(mount: ZeroMount, *statements: str) -> None:
        """With the mount stopped: changes a test cannot make through it."""
        mount.unmount()
        mount.stop_worker()
        db = sqlite3.connect(mount.cache / "state.sqlite3")
        try:
            for sql in statements:
                db.execute(sql)
            db.commit()
        finally:
            db.close()
        mount.start_worker()
        mount.start_fuse()

    next_snapshot = "UPDATE meta SET value = '1' WHERE key = 'backup_needs_snapshot'"  # as after a missed remote
    try:
        first, keyfile = started_with_key(mounts, tmp_path / "first", remotes, metadataBackupInterval=1)
        (first.mnt / "old.txt").write_bytes(b"before the point\n")
        backed_up(first)
        in_state(first, next_snapshot)
        (first.mnt / "z.txt").write_bytes(b"z\n")
        backed_up(first)  # a snapshot holding old.txt's data: the point rolled back to
        # Two hours pass: that snapshot is two hours old, in the state and in the remotes.
        in_state(first, "UPDATE backup_points SET begin_at = begin_at - 7200, end_at = end_at - 7200")
        for folder in (kept, away):
            for path in folder.rglob("meta/*"):
                st = path.stat()
                os.utime(path, (st.st_atime - 2 * hour, st.st_mtime - 2 * hour))
        then = time.time() - 2 * hour + 1

        work = os.urandom(200_000)
        (first.mnt / "work.bin").write_bytes(work)
        backed_up(first)
        os.unlink(first.mnt / "work.bin")
        backed_up(first)
        first.zero("gc", str(first.cache), "--delete", "--grace", "0", timeout=120)  # stamps its object unused
        # Unused for longer than the points' margin before the next snapshot begins.
        unused_long_before = ("UPDATE objects SET unreferenced_since = unreferenced_since - "
                              f"{changelog.POINT_MARGIN_S * 2} WHERE unreferenced_since IS NOT NULL")
        in_state(first, unused_long_before, next_snapshot)
        (first.mnt / "m2.txt").write_bytes(b"m2\n")
        backed_up(first)  # a snapshot naming the unused row; the journals are pruned
        stored = set(remote_object_names(kept, away))
        first.zero("gc", str(first.cache), "--delete", "--grace", "0", timeout=120)
        assert stored - set(remote_object_names(kept, away)), "setup: the old line collected work.bin's object"
        (first.mnt / "m3.txt").write_bytes(b"m3\n")
        backed_up(first)
        first.unmount()
        first.stop_worker()

        taker = ZeroMount(tmp_path / "taker", remotes=remotes, metadataBackupInterval=1)
        mounts.append(taker)
        taker.zero("restore", str(taker.cache), "--recovery-key-file", str(keyfile), "--at", str(then),
                   "--take-over", timeout=300)
        taker.start_worker()
        taker.start_fuse()
        assert (taker.mnt / "old.txt").read_bytes() == b"before the point\n"
        write_synced(taker.mnt / "work-redone.bin", work)
        backed_up(taker)
        taker.unmount()
        taker.stop_worker()

        back = ZeroMount(tmp_path / "back", remotes=remotes)  # the taker's machine is lost
        mounts.append(back)
        back.zero("restore", str(back.cache), "--recovery-key-file", str(keyfile), timeout=300)
        back.start_worker()
        back.start_fuse()
        assert (back.mnt / "work-redone.bin").read_bytes() == work, "the fsynced work-redone.bin was lost"
    finally:
        close_all(mounts)


def remote_object_names(*folders: Path) -> list[str]:
    return [path.name for folder in folders for path in folder.rglob("objects/*/*")]


class background(threading.Thread):
    """Run ``work(*args)`` in a thread; ``error`` holds what it raised."""

    def __init__(self, work, *args):
        super().__init__(daemon=True)
        self.work, self.args, self.error = work, args, None
        self.start()

    def run(self) -> None:
        try:
            self.work(*self.args)
        except BaseException as error:  # noqa: BLE001 - the test reports it
            self.error = error


def write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
