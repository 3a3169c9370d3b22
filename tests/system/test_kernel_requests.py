"""What the kernel sends zero-fuse for a program's I/O, on a real mount."""

from __future__ import annotations

import os
from pathlib import Path

from zero.fsutil import zero_mounts

from workerkit import State, drop_caches, wait_until

MIB = 1024 * 1024


def published_reads(mount) -> tuple[int, int]:
    """(read calls, bytes read) zero-fuse has added to the state so far (it adds its counts once a second)."""
    state = State(mount.cache)
    calls = state.query("SELECT calls FROM fuse_ops WHERE op = 'read'")
    read = state.query("SELECT value FROM counters WHERE name = 'fuse_read_bytes'")
    return (calls[0][0] if calls else 0), (read[0][0] if read else 0)


def test_a_sequential_read_reaches_zero_in_requests_of_a_mebibyte(make_mount):
    """Linux caps a FUSE mount's read-ahead at 128 KiB whatever the filesystem
    asks for; zero-fuse (root here) raises its mount's to 1 MiB, so a film read
    from the cache costs a callback per MiB, not eight (zero/fuse/readahead.py)."""
    mount = make_mount(worker=False)
    data = os.urandom(16 * MIB)
    (mount.mnt / "film").write_bytes(data)
    device = zero_mounts(mount.mnt)[-1][1]
    assert Path(f"/sys/class/bdi/{device}/read_ahead_kb").read_text().strip() == "1024"

    drop_caches(mount.mnt / "film")
    calls_before, bytes_before = published_reads(mount)
    with open(mount.mnt / "film", "rb", buffering=0) as film:
        read_back = b"".join(iter(lambda: film.read(MIB), b""))
    assert read_back == data

    def all_published():
        calls, read = published_reads(mount)
        return (calls, read) if read - bytes_before >= len(data) else None
    calls, _read = wait_until(all_published, 30, "zero-fuse to publish the reads")
    assert calls - calls_before <= 24, f"{calls - calls_before} read requests for 16 MiB (128 KiB each: 128)"
