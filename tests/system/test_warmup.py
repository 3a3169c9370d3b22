"""`zero warmup` and `zero pin --wait` (issue #12): an evicted tree is fetched
into the cache so that reading it needs no fault-in; with its only remote
gone, --wait says what could not be fetched and exits non-zero."""

from __future__ import annotations

import os

from workerkit import KIB, MIB, State, settle_evicted, wait_until
from zero.state import requests

CONFIG = dict(targetDiskUsage="4MiB", chunkSize="256KiB", uploadDelay=0)
REMOTE_GONE = ("Remote 'local' is unavailable", "Remote 'local' is not answering", "is healthy again")


def counter(mount, name: str) -> int:
    rows = State(mount.cache).query("SELECT value FROM counters WHERE name = ?", name)
    return rows[0][0] if rows else 0


def evicted_tree(mount, filler_mib: int = 6) -> tuple[dict, list[int]]:
    """tree/a.bin and tree/sub/b.bin written, uploaded, then pushed out of the
    cache by a filler; returns their contents and inodes."""
    contents = {"tree/a.bin": os.urandom(MIB), "tree/sub/b.bin": os.urandom(MIB + 3 * KIB)}
    for name, data in {**contents, "filler.bin": os.urandom(filler_mib * MIB)}.items():
        (mount.mnt / name).parent.mkdir(parents=True, exist_ok=True)
        (mount.mnt / name).write_bytes(data)
        mount.zero("sync", str(mount.mnt))
    inos = [os.stat(mount.mnt / name).st_ino for name in contents]
    state = State(mount.cache)
    wait_until(lambda: set(state.states(inos)) == {"remote"}, 30,
               f"the tree to be evicted (states now: {state.states(inos)})")
    settle_evicted(mount, *(mount.mnt / name for name in contents))
    return contents, inos


def test_warmup_wait_brings_an_evicted_tree_into_the_cache_and_reads_need_no_fetch(make_mount):
    # Room to spare: fault-ins make room against an estimate that may run over by the fetches in
    # flight (Evictor.make_room), and with the tree at over half a 4 MiB cache a loaded CI machine
    # once saw 3 freshly warmed chunks evicted again before the test looked.
    m = make_mount(**{**CONFIG, "targetDiskUsage": "8MiB"})
    contents, inos = evicted_tree(m, filler_mib=12)
    state = State(m.cache)

    result = m.zero("warmup", str(m.mnt / "tree"), "--wait")
    assert "Warmed up 2 file(s): 9 chunk(s)" in result.stdout, result.stdout
    assert set(state.states(inos)) == {"clean"}, f"not all local after warmup --wait: {state.states(inos)}"

    # Not the worker's fault_ins counter: priming may bring evicted filler chunks back into the
    # room the evictions left (two did, on a loaded CI machine), and that is not a read's fetch.
    read_bytes, misses = counter(m, "fuse_read_bytes"), counter(m, "fuse_reads_faulted_in")
    settle_evicted(m, *(m.mnt / name for name in contents))  # the reads below go to zero-fuse
    for name, data in contents.items():
        assert (m.mnt / name).read_bytes() == data, f"{name} read back wrong after warmup"
    # Published about once a second; waiting for every byte read means every read is counted.
    total = sum(map(len, contents.values()))
    wait_until(lambda: counter(m, "fuse_read_bytes") >= read_bytes + total, 30,
               "zero-fuse to publish its read counts")
    assert counter(m, "fuse_reads_faulted_in") == misses, "a read after warmup waited for a fetch"
    assert set(state.states(inos)) == {"clean"}, f"warmed chunks evicted again: {state.states(inos)}"

    again = m.zero("warmup", str(m.mnt / "tree"))
    assert "in the cache already (2 file(s)" in again.stdout, again.stdout


def test_pin_wait_returns_once_the_pinned_tree_is_local(make_mount):
    m = make_mount(**CONFIG)
    _contents, inos = evicted_tree(m)
    result = m.zero("pin", "--wait", str(m.mnt / "tree"))
    assert "all 2 file(s) are in the cache and stay there" in result.stdout, result.stdout
    assert set(State(m.cache).states(inos)) == {"clean"}


def test_warmup_wait_with_the_remote_gone_names_what_it_could_not_fetch(make_mount):
    m = make_mount(allowed_log=REMOTE_GONE, **CONFIG)
    _contents, inos = evicted_tree(m)
    away = m.root / "remote-away"
    os.rename(m.remote, away)
    try:
        result = m.zero("warmup", str(m.mnt / "tree"), "--wait", check=False)
    finally:
        os.rename(away, m.remote)
    assert result.returncode == 1, f"warmup --wait succeeded with its remote gone:\n{result.stdout}{result.stderr}"
    assert "fetched 0 of 9 chunk(s); 9 could not be" in result.stderr, result.stderr
    assert "only on remote(s) that are down now (local;" in result.stderr, result.stderr
    assert "/tree/a.bin" in result.stderr and "/tree/sub/b.bin" in result.stderr, result.stderr
    assert set(State(m.cache).states(inos)) == {"remote"}
    wait_until(lambda: State(m.cache).query("SELECT health FROM remotes") == [("healthy",)], 60,
               "the remote to be healthy again")


def test_warmup_wait_refuses_a_tree_bigger_than_the_cache(make_mount):
    m = make_mount(**CONFIG)
    (m.mnt / "big.bin").write_bytes(os.urandom(5 * MIB))
    result = m.zero("warmup", str(m.mnt / "big.bin"), "--wait", check=False)
    assert result.returncode == 1 and "more than targetDiskUsage (4.0 MiB)" in result.stderr, result.stderr
    # Priming may bring evicted chunks back meanwhile (the cache has room): those are the worker's own.
    assert not State(m.cache).query("SELECT 1 FROM fetch_requests WHERE priority < ?", requests.PRIME), \
        "a refused warmup left fetch requests"
