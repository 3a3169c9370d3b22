"""A corrupt copy of a remote object is quarantined: never a dedup target,
never a durable copy, repaired from the cache or another replica; `zero scrub`
and the worker's background scrub find such copies before a reader does
(issue 10)."""

from __future__ import annotations

import errno
import os
import re

from workerkit import KIB, MIB, State, object_path, settle_evicted, wait_until
from zero.errors import ObjectCorrupt
from zero.remote.codec import Codec

CHUNK = 256 * KIB
CORRUPT_LOG = "cannot be read back"               # the worker's line when no copy is good
CORRUPT_READ_LOG = "zero-worker could not fetch"  # zero-fuse's line for the failed read
QUARANTINE_LOG = "quarantined"                    # the worker's line for each bad copy it finds


def codec_of(cache) -> Codec:
    """The filesystem's codec, from its state, to check what a remote holds."""
    keys = dict(State(cache).query("SELECT key, value FROM meta WHERE key IN ('hash_key', 'encryption_key')"))
    return Codec(bytes.fromhex(keys["hash_key"]), bytes.fromhex(keys["encryption_key"]))


def flip_a_byte(path) -> bytes:
    """Damage an object file in place; returns the damaged bytes."""
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    path.write_bytes(bytes(damaged))
    return bytes(damaged)


def opens_as(codec: Codec, path, key: str) -> bytes | None:
    """The plaintext of the object file, or None if it does not authenticate."""
    try:
        return codec.open(path.read_bytes(), expected_key=key)
    except ObjectCorrupt:
        return None


def write_synced(mount, name: str, data: bytes) -> int:
    path = mount.mnt / name
    path.write_bytes(data)
    mount.zero("sync", str(mount.mnt))
    return os.stat(path).st_ino


def evict(mount, ino: int, filler: str) -> None:
    """Push the file out of the cache with a filler written after it (least recently used goes first)."""
    write_synced(mount, filler, os.urandom(4 * MIB))
    wait_until(lambda: set(State(mount.cache).chunks_of(ino).values()) == {"remote"}, 60,
               f"every chunk of inode {ino} to be evicted")


def read_error(path, offset: int, size: int) -> OSError | None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.pread(fd, size, offset)
    except OSError as error:
        return error
    finally:
        os.close(fd)
    return None


def two_replicas_of_an_evicted_file(make_mount, tmp_path):
    """A mount with replicas on two local remotes, 'first' and 'second', and
    a 1 MiB file a.bin uploaded and evicted: (mount, a.bin's inode, its bytes)."""
    remotes = [{"name": "first", "type": "local", "path": str(tmp_path / "first")},
               {"name": "second", "type": "local", "path": str(tmp_path / "second")}]
    m = make_mount(remotes=remotes, replicas=2, chunkSize="256KiB", uploadDelay=0, targetDiskUsage="2MiB",
                   lowWatermark=0.5, allowed_log=(QUARANTINE_LOG,))
    data = os.urandom(MIB)
    a = write_synced(m, "a.bin", data)
    evict(m, a, "filler1.bin")
    return m, a, data


def test_a_new_file_is_not_deduplicated_onto_a_corrupt_object(make_mount):
    m = make_mount(chunkSize="256KiB", uploadDelay=0, targetDiskUsage="2MiB", lowWatermark=0.5, faultInTimeout=10,
                   allowed_log=(CORRUPT_LOG, CORRUPT_READ_LOG, QUARANTINE_LOG))
    data = os.urandom(MIB)
    a = write_synced(m, "a.bin", data)
    evict(m, a, "filler1.bin")
    key = State(m.cache).chunk_rows(a)[1][2]
    flip_a_byte(object_path(m.remote, key))

    settle_evicted(m, m.mnt / "a.bin")
    error = read_error(m.mnt / "a.bin", CHUNK, 4096)
    assert error is not None and error.errno == errno.EIO, f"a corrupt chunk read as {error!r}, not EIO"
    assert any(key in line and "failed authentication" in line
               for line in m.worker_log().splitlines() if CORRUPT_LOG in line), m.worker_log()
    status = m.zero("status", str(m.cache)).stdout
    assert re.search(r"no good copy.*\n.*/a\.bin", status), f"zero status does not name the damaged file:\n{status}"

    # The same bytes again: the upload must store a good copy, not count the corrupt one.
    b = write_synced(m, "b.bin", data)
    evict(m, b, "filler2.bin")
    settle_evicted(m, m.mnt / "b.bin")
    assert (m.mnt / "b.bin").read_bytes() == data, "the new file was deduplicated onto the corrupt object"
    # That fresh copy repaired the object, so the first file reads back too and nothing is reported.
    assert opens_as(codec_of(m.cache), object_path(m.remote, key), key) == data[CHUNK:2 * CHUNK]
    assert (m.mnt / "a.bin").read_bytes() == data
    assert "no good copy" not in m.zero("status", str(m.cache)).stdout


def test_with_two_replicas_reads_fall_back_and_the_corrupt_copy_is_repaired(make_mount, tmp_path):
    m, a, data = two_replicas_of_an_evicted_file(make_mount, tmp_path)
    # Which copy a fault-in reads first follows the remotes' measured speed; a worker that has read
    # nothing yet takes them in the config's order. So: damage every copy on 'first' and restart the
    # worker, and its first fault-in, whichever chunk it is for, meets a bad copy and must fall back.
    m.stop_worker()
    keys = [key for (key,) in State(m.cache).query("SELECT key FROM objects")]
    for key in keys:
        flip_a_byte(object_path(tmp_path / "first", key))
    m.start_worker()
    settle_evicted(m, m.mnt / "a.bin")
    assert (m.mnt / "a.bin").read_bytes() == data, "a read did not fall back to the good copy"

    def quarantined_on_first() -> set[str]:  # from the log: a repair may lift the quarantine at once
        lines = [line for line in m.worker_log().splitlines() if QUARANTINE_LOG in line and "remote first" in line]
        return {key for key in keys if any(key in line for line in lines)}
    wait_until(quarantined_on_first, 30, "the fault-in to quarantine the bad copy it met on 'first'")
    found = quarantined_on_first()
    # The repaired object lands before the commit that lifts its quarantine: wait for both.
    codec = codec_of(m.cache)
    plaintexts = {key: opens_as(codec, object_path(tmp_path / "second", key), key) for key in found}
    assert None not in plaintexts.values(), "a copy on 'second' was damaged too"
    wait_until(lambda: all(opens_as(codec, object_path(tmp_path / "first", key), key) == plaintexts[key]
                           for key in found) and not State(m.cache).query("SELECT * FROM quarantine"), 60,
               "the bad copies on 'first' that reads met to be repaired and out of quarantine")

    # Now only the repaired copy is good: a read of its chunk must be served from it.
    key = sorted(found)[0]
    flip_a_byte(object_path(tmp_path / "second", key))
    ino, idx = State(m.cache).query("SELECT ino, idx FROM chunks WHERE object_key = ?", key)[0]
    path = next(p for p in m.mnt.iterdir() if os.stat(p).st_ino == ino)
    evict(m, ino, "filler2.bin")
    settle_evicted(m, path)
    with open(path, "rb") as reader:
        reader.seek(idx * CHUNK)
        assert reader.read(CHUNK) == plaintexts[key]


def test_zero_scrub_finds_a_flipped_byte_in_one_replica_and_repairs_it_from_the_other(make_mount, tmp_path):
    m, a, data = two_replicas_of_an_evicted_file(make_mount, tmp_path)
    m.stop_worker()  # nothing faults the chunk back in: the repair must come from the other replica
    assert State(m.cache).chunks_of(a)[2] == "remote"
    key = State(m.cache).chunk_rows(a)[2][2]
    first_copy = object_path(tmp_path / "first", key)
    flip_a_byte(first_copy)

    result = m.zero("scrub", str(m.cache))
    assert re.search(r"\b1 bad cop(y|ies) found, 1 repaired, 0 unrepairable", result.stdout), result.stdout
    checked = int(re.search(r"(\d+) cop(?:y|ies) checked", result.stdout).group(1))
    assert checked == 2 * len(State(m.cache).query("SELECT key FROM objects")), result.stdout
    assert opens_as(codec_of(m.cache), first_copy, key) == data[2 * CHUNK:3 * CHUNK]
    again = m.zero("scrub", str(m.cache))
    assert re.search(r"\b0 bad copies found", again.stdout), again.stdout


def test_zero_scrub_reports_a_copy_it_cannot_repair_with_the_file(make_mount):
    m = make_mount(chunkSize="256KiB", uploadDelay=0, targetDiskUsage="2MiB", lowWatermark=0.5,
                   allowed_log=(QUARANTINE_LOG,))
    (m.mnt / "docs").mkdir()
    a = write_synced(m, "docs/a.bin", os.urandom(MIB))
    evict(m, a, "filler.bin")
    m.stop_worker()
    flip_a_byte(object_path(m.remote, State(m.cache).chunk_rows(a)[3][2]))

    result = m.zero("scrub", str(m.cache), check=False)
    assert result.returncode != 0, "an unrepairable copy must not exit 0"
    assert re.search(r"1 bad copy found, 0 repaired, 1 unrepairable", result.stdout), result.stdout
    assert "/docs/a.bin" in result.stdout and "bytes 786432-1048575" in result.stdout, result.stdout


def test_the_background_scrub_finds_a_flipped_byte_and_repairs_it_from_the_cache(make_mount):
    m = make_mount(chunkSize="256KiB", uploadDelay=0, scrubRate="64M", allowed_log=(QUARANTINE_LOG,))
    data = os.urandom(MIB)
    a = write_synced(m, "a.bin", data)
    key = State(m.cache).chunk_rows(a)[0][2]
    stored = object_path(m.remote, key)
    flip_a_byte(stored)
    codec = codec_of(m.cache)
    wait_until(lambda: opens_as(codec, stored, key) == data[:CHUNK], 60,
               "the background scrub to find and repair the flipped byte")
    assert any(key in line for line in m.worker_log().splitlines() if QUARANTINE_LOG in line), m.worker_log()
    wait_until(lambda: not State(m.cache).query("SELECT * FROM quarantine"), 30, "the quarantine to be lifted")
