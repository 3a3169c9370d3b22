"""A local remote that goes away must not lose a byte: not when its folder is
renamed away (the worker used to re-create it and "upload" into it), and not
when the drive under it is unmounted (an empty folder that takes writes).
zero writes nothing into the wrong place, evicts nothing onto it, says so in
`zero status`, and once the real remote is back every file reads back."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from workerkit import KIB, MIB, State, deleted_chunk_files_held, drop_caches, sha256_of, wait_until

REMOTE_GONE = ("Remote 'local' is unavailable", "Remote 'local' is not answering", "is healthy again",
               "remote local is unavailable")
CONFIG = dict(chunkSize="256KiB", uploadDelay=0, targetDiskUsage="3MiB", lowWatermark=0.5)


def write(path, size: int, seed: int) -> str:
    path.write_bytes(os.urandom(size) if seed < 0 else bytes([seed]) * (size // 2) + os.urandom(size - size // 2))
    return sha256_of(path)


def status_of(mount) -> str:
    return mount.zero("status", str(mount.cache)).stdout


def remote_line(mount) -> str:
    return next(line for line in status_of(mount).splitlines() if line.strip().startswith("local:"))


def check_identical(mount, expected: dict) -> None:
    drop_caches()
    for name, digest in expected.items():
        assert sha256_of(mount.mnt / name) == digest, f"{name} does not read back identical"


def never_evicted_while_away(mount, inos) -> None:
    states = State(mount.cache).states(inos)
    assert states.get("remote", 0) == 0 and states.get("fetching", 0) == 0, states


def exercise_a_missing_remote(mount, go_away, come_back) -> None:
    m = mount
    expected = {"before.bin": write(m.mnt / "before.bin", 2 * MIB, 1)}
    m.zero("sync", str(m.mnt))
    go_away()
    # Written while the remote is away: it must stay in the cache, dirty, however full the cache gets.
    expected["during.bin"] = write(m.mnt / "during.bin", 2 * MIB, 2)
    expected["more.bin"] = write(m.mnt / "more.bin", 2 * MIB, 3)
    during = [os.stat(m.mnt / name).st_ino for name in ("during.bin", "more.bin")]
    wait_until(lambda: "unavailable" in remote_line(m) or "unhealthy" in remote_line(m), 60,
               "zero status to say the remote is not usable")
    line = remote_line(m)
    assert "waits for the remotes" in line, line
    failed = m.zero("sync", str(m.mnt), "--timeout", "3", check=False)
    assert failed.returncode != 0, "zero sync reported success while the remote was gone"
    never_evicted_while_away(m, during)
    check_identical(m, {name: expected[name] for name in ("during.bin", "more.bin")})
    come_back()
    wait_until(lambda: "healthy since" in remote_line(m), 60, "the remote to be healthy again")
    m.zero("sync", str(m.mnt))
    check_identical(m, expected)


def test_a_remote_folder_renamed_away_is_never_recreated(make_mount):
    m = make_mount(allowed_log=REMOTE_GONE, **CONFIG)
    away = m.root / "remote-renamed-away"

    def go_away():
        os.rename(m.remote, away)

    def come_back():
        assert not m.remote.exists(), "zero re-created the remote folder while the real one was away"
        os.rename(away, m.remote)

    exercise_a_missing_remote(m, go_away, come_back)


@pytest.fixture
def remote_drive(tmp_path):
    """The remote folder as a mount point of a 'drive' (a folder elsewhere, bind-mounted), which the
    test can unmount and mount again; its contents stay on the drive, as a real disk's would.
    Tests request it before make_mount, so zero is stopped before the drive goes away
    (pytest tears fixtures down in the reverse of the order they were requested)."""
    drive = tmp_path / "drive"
    drive.mkdir()
    folder = tmp_path / "fs" / "remote"
    folder.mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(drive), str(folder)], check=True)
    yield folder, drive
    subprocess.run(["umount", "-l", str(folder)], check=False)


def unmount_drive(folder) -> None:
    """umount, as a person would: again while it says the drive is busy. zero may
    be reading or writing a file there right then (a scrub, a metadata backup, a
    marker check); what it must not do is hold the drive for long."""
    def unmounted():
        result = subprocess.run(["umount", str(folder)], capture_output=True, text=True)
        assert result.returncode == 0 or "busy" in result.stderr, f"umount failed: {result.stderr}"
        return result.returncode == 0
    wait_until(unmounted, 60, f"zero to let go of the drive at {folder} so that it unmounts")


def test_a_remote_drive_that_is_unmounted_gets_no_writes_in_its_empty_folder(remote_drive, make_mount):
    folder, drive = remote_drive
    m = make_mount(allowed_log=REMOTE_GONE, **CONFIG)
    assert m.remote == folder

    def go_away():
        unmount_drive(folder)

    def come_back():
        assert list(folder.iterdir()) == [], \
            f"zero wrote into the empty folder of an unmounted drive: {sorted(os.listdir(folder))}"
        subprocess.run(["mount", "--bind", str(drive), str(folder)], check=True)

    exercise_a_missing_remote(m, go_away, come_back)


def test_reading_an_evicted_file_while_its_drive_is_away_says_the_remote_is_away_not_that_data_is_lost(
        remote_drive, make_mount):
    """The unmounted drive leaves an empty folder where the objects were. A fault-in
    used to read that as "the object is missing", log that the bytes cannot be read
    back until a good copy is put back (as if lost) and fail the read at once. The
    remote is away, not the data: the read fails after faultInTimeout, the remote is
    reported unavailable, and once the drive is back the file reads back."""
    folder, drive = remote_drive
    m = make_mount(allowed_log=REMOTE_GONE, faultInTimeout="2s", **CONFIG)
    expected = write(m.mnt / "before.bin", 2 * MIB, 1)
    write(m.mnt / "filler.bin", 4 * MIB, -1)  # pushes the cache over its 3 MiB target
    m.zero("sync", str(m.mnt))
    ino = os.stat(m.mnt / "before.bin").st_ino
    wait_until(lambda: State(m.cache).states([ino]) == {"remote": 8}, 60, "before.bin to be evicted")
    # zero-fuse may read an evicted chunk through a descriptor it still holds (the same bytes);
    # once it let go of them, every read of before.bin must come from the remote.
    wait_until(lambda: deleted_chunk_files_held(m.fuse.pid, m.cache)[0] == 0, 60,
               "zero-fuse to let go of the evicted chunk files")

    unmount_drive(folder)
    drop_caches()
    with pytest.raises(OSError) as failed:
        sha256_of(m.mnt / "before.bin")
    assert failed.value.errno == errno.EIO, failed.value
    assert "cannot be read back" not in m.worker_log(), \
        "an away remote was reported as lost data:\n" + m.worker_log()
    assert "unavailable" in remote_line(m), remote_line(m)
    assert list(folder.iterdir()) == [], f"zero wrote into the empty folder: {sorted(os.listdir(folder))}"

    subprocess.run(["mount", "--bind", str(drive), str(folder)], check=True)
    wait_until(lambda: "healthy since" in remote_line(m), 60, "the remote to be healthy again")
    drop_caches()
    assert sha256_of(m.mnt / "before.bin") == expected
