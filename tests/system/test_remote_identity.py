"""A local remote that goes away must not lose a byte: not when its folder is
renamed away (the worker used to re-create it and "upload" into it), and not
when the drive under it is unmounted (an empty folder that takes writes).
zero writes nothing into the wrong place, evicts nothing onto it, says so in
`zero status`, and once the real remote is back every file reads back."""

from __future__ import annotations

import os
import subprocess

import pytest

from workerkit import KIB, MIB, State, drop_caches, sha256_of, wait_until

REMOTE_GONE = ("Remote 'local' is unavailable", "Remote 'local' is not answering", "is healthy again")
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
    test can unmount and mount again; its contents stay on the drive, as a real disk's would."""
    drive = tmp_path / "drive"
    drive.mkdir()
    folder = tmp_path / "fs" / "remote"
    folder.mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(drive), str(folder)], check=True)
    yield folder, drive
    subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_remote_drive_that_is_unmounted_gets_no_writes_in_its_empty_folder(make_mount, remote_drive):
    folder, drive = remote_drive
    m = make_mount(allowed_log=REMOTE_GONE, **CONFIG)
    assert m.remote == folder

    def go_away():
        subprocess.run(["umount", str(folder)], check=True)

    def come_back():
        assert list(folder.iterdir()) == [], \
            f"zero wrote into the empty folder of an unmounted drive: {sorted(os.listdir(folder))}"
        subprocess.run(["mount", "--bind", str(drive), str(folder)], check=True)

    exercise_a_missing_remote(m, go_away, come_back)
