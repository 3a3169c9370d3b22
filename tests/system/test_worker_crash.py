"""kill -9 at every crash point of docs/dev/chunk_lifecycle.md, one test per row.

Each case starts zero-worker (or, for the collector, `zero gc`) with
ZERO_TEST_CRASH_AT=<step>, drives the workload that reaches the step, waits
for the process to die by SIGKILL, restarts it without the crash point and
checks what the lifecycle document promises:

- every write that returned is intact (read back after dropping the page cache);
- nothing is left ``uploading`` or ``fetching``;
- no chunk file without a row, no temporary fault-in file, and no ``clean`` or
  ``dirty`` row whose file is missing;
- after the collector ran (``zero gc --grace 0``) the remote holds no object the
  state does not know, and every object a chunk names is in the remote.

The last test kill -9s zero-fuse while the worker is uploading what it writes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from support import command
from workerkit import KIB, State, deleted_chunk_files_held, drop_caches, status_counters, wait_until
from zero.worker.crashpoints import STEPS

CHUNK = 64 * KIB
CONFIG = dict(chunkSize="64KiB", targetDiskUsage="1MiB", lowWatermark=0.5, uploadDelay=0)
DEATH_TIMEOUT_S = 45.0


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as out:
        out.write(data)


def write_dataset(m, count: int = 4, size: int = 5 * CHUNK + 1234) -> dict[str, bytes]:
    """Files of several chunks, each ending mid-chunk; returns name -> bytes written."""
    expected = {}
    for n in range(count):
        data = os.urandom(size + n * 777)
        write_file(m.mnt / f"file-{n}", data)
        expected[f"file-{n}"] = data
    return expected


def verify(m, expected: dict[str, bytes]) -> None:
    drop_caches(*(m.mnt / name for name in expected))
    for name, data in expected.items():
        got = (m.mnt / name).read_bytes()
        assert len(got) == len(data), f"{name}: {len(got)} bytes, wrote {len(data)}"
        if digest(got) != digest(data):
            first = next(i for i, (a, b) in enumerate(zip(got, data)) if a != b)
            raise AssertionError(f"{name}: differs from what was written at offset {first} "
                                 f"(chunk {first // CHUNK}); zeros there: {not any(got[first:first + 64])}")


def wait_killed(process: subprocess.Popen, what: str) -> None:
    try:
        code = process.wait(timeout=DEATH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{what} did not reach its crash point within {DEATH_TIMEOUT_S:g}s") from None
    assert code == -signal.SIGKILL, f"{what} exited with {code}, not by SIGKILL at its crash point"


def object_files(remote: Path) -> dict[str, Path]:
    """key -> file of every object in the local-folder remote (<fs_id>/objects/<2>/<key>)."""
    return {path.name: path for path in Path(remote).glob("*/objects/*/*") if path.is_file()}


def consistency_problems(m) -> list[str]:
    """What is wrong between the state, the cache folder and the remote (call while
    the worker is stopped and zero-fuse is idle, so nothing moves underneath)."""
    state = State(m.cache)
    problems = []
    rows = {(ino, idx): (st, key) for ino, idx, st, key in
            state.query("SELECT ino, idx, state, object_key FROM chunks")}
    for (ino, idx), (st, _) in rows.items():
        if st in ("uploading", "fetching"):
            problems.append(f"chunk {ino}-{idx} is left {st}")
    files = set()
    for path in (m.cache / "chunks").rglob("*"):
        if path.is_file():
            ino, _, idx = path.name.partition("-")
            key = (int(ino), int(idx)) if ino.isdigit() and idx.isdigit() else None
            files.add(key)
            if key not in rows:
                problems.append(f"orphan chunk file {path.relative_to(m.cache)} (no chunks row)")
    for path in (m.cache / "tmp").iterdir():
        problems.append(f"temporary file left: {path.relative_to(m.cache)}")
    for key, (st, _) in rows.items():
        if st in ("clean", "dirty") and key not in files:
            problems.append(f"chunk {key[0]}-{key[1]} is {st} but its cache file is missing")
    remote = object_files(m.remote)
    known = {key for (key,) in state.query("SELECT key FROM objects")}
    for key in sorted(set(remote) - known):
        problems.append(f"remote object {key} is unknown to the state (not collected)")
    for (ino, idx), (st, key) in rows.items():
        if st in ("clean", "remote") and key not in remote:
            problems.append(f"chunk {ino}-{idx} is {st} but its object {key} is not in the remote")
    return problems


def finish_and_check(m, expected: dict[str, bytes]) -> None:
    """After the restart: the data, then sync, collect and the consistency checks."""
    verify(m, expected)
    # The filesystem keeps working: one more file goes through the recovered worker.
    extra = os.urandom(3 * CHUNK + 99)
    write_file(m.mnt / "after-recovery", extra)
    expected = {**expected, "after-recovery": extra}
    m.zero("sync", str(m.mnt), timeout=60)
    state = State(m.cache)
    wait_until(lambda: not state.query("SELECT 1 FROM chunks WHERE state IN ('uploading', 'fetching')"),
               30, "no chunk to be left uploading or fetching after the restart")
    assert m.stop_worker() == 0, m.worker_log()[-3000:]
    m.zero("gc", str(m.cache), "--grace", "0", timeout=60)
    problems = consistency_problems(m)
    assert not problems, "after recovery:\n" + "\n".join(problems)
    start_worker(m)  # reads of evicted chunks need it
    verify(m, expected)


def start_worker(m, env: dict | None = None) -> subprocess.Popen:
    """Start zero-worker and wait until it has recovered and runs (its log says so).
    (Polling its log, not its lock: probing the lock while it starts could make it fail.)"""
    started = m.worker_log().count("Worker started")
    worker = m.start_worker(env=env)
    wait_until(lambda: m.worker_log().count("Worker started") > started or worker.poll() is not None,
               30, "zero-worker to start")
    assert worker.poll() is None, f"zero-worker exited with {worker.returncode}:\n{m.worker_log()[-3000:]}"
    return worker


def evicted_chunks(m) -> list[tuple[int, int]]:
    return State(m.cache).query("SELECT ino, idx FROM chunks WHERE state = 'remote'")


def run_gc_crashing(m, step: str) -> subprocess.Popen:
    return subprocess.Popen([command("zero"), "gc", str(m.cache), "--grace", "0"],
                            env={**m.env, "ZERO_TEST_CRASH_AT": step},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.parametrize("step", STEPS)
def test_worker_killed_at_crash_point_recovers(make_mount, step):
    m = make_mount(worker=False, **CONFIG)
    state = State(m.cache)
    expected: dict[str, bytes] = {}
    reader_result: dict[str, object] = {}
    reader = None

    if step.startswith("gc."):
        # The collector claims the rows of a deleted file's objects, then dies before deleting them.
        start_worker(m)
        expected = write_dataset(m, count=2)
        doomed = os.urandom(4 * CHUNK)
        write_file(m.mnt / "doomed", doomed)
        m.zero("sync", str(m.mnt), timeout=60)
        objects_before = set(object_files(m.remote))
        os.unlink(m.mnt / "doomed")
        gc = run_gc_crashing(m, step)
        wait_killed(gc, f"zero gc with ZERO_TEST_CRASH_AT={step}")
        # The crash left the copies behind, with no rows: exactly the orphans the sweep must find.
        unknown = set(object_files(m.remote)) - {k for (k,) in state.query("SELECT key FROM objects")}
        assert unknown and unknown <= objects_before, (unknown, objects_before)
    else:
        worker = start_worker(m, env={"ZERO_TEST_CRASH_AT": step})
        if step.startswith("upload."):
            expected = write_dataset(m)  # closing hands the chunks to the worker, which uploads at once
        elif step.startswith("evict."):
            expected = write_dataset(m, count=6)  # ~2 MiB against a 1 MiB target: uploaded, then evicted
        elif step.startswith("fetch."):
            expected = write_dataset(m, count=6)
            wait_until(lambda: len(evicted_chunks(m)) >= 4, 30, "the worker to evict some chunks")
            # zero-fuse would serve the evicted chunk from its descriptor on the unlinked file
            # (correct, but no fault-in) until its flusher lets go of such descriptors
            wait_until(lambda: deleted_chunk_files_held(m.fuse.pid, m.cache)[0] == 0, 30,
                       "zero-fuse to close its descriptors on evicted chunk files")
            ino, _ = evicted_chunks(m)[0]
            name = next(n for n in expected if os.stat(m.mnt / n).st_ino == ino)
            drop_caches(m.mnt / name)

            def read_back():  # waits for the fault-in across the crash and the restart
                try:
                    reader_result["data"] = (m.mnt / name).read_bytes()
                except BaseException as error:
                    reader_result["error"] = error
            reader_result["name"] = name
            reader = threading.Thread(target=read_back, daemon=True)
            reader.start()
        wait_killed(worker, f"zero-worker with ZERO_TEST_CRASH_AT={step}")
        # What the row of the lifecycle document says is on disk right after the step:
        if step == "upload.started":
            assert state.query("SELECT 1 FROM chunks WHERE state = 'uploading'")
        elif step == "upload.intent":
            assert state.query("SELECT 1 FROM objects WHERE key NOT IN (SELECT key FROM placements)")
        elif step == "upload.sent":
            assert state.query("SELECT 1 FROM chunks WHERE state = 'uploading'")
            assert object_files(m.remote)
        elif step == "evict.unlinked":
            missing = [(ino, idx) for ino, idx in state.query("SELECT ino, idx FROM chunks WHERE state = 'clean'")
                       if not os.path.exists(m.cache / "chunks" / f"{ino % 256:02x}" / f"{ino}-{idx}")]
            assert missing, "no clean chunk lost its file: the crash was not mid-eviction"
            # A write to that chunk before the worker is back must not re-create the file
            # empty (losing the rest of the chunk): it waits for the recovery and a fault-in.
            ino, idx = missing[0]
            name = next(n for n in expected if os.stat(m.mnt / n).st_ino == ino)
            patch, at = os.urandom(100), idx * CHUNK + 1000
            patched = bytearray(expected[name])
            patched[at:at + len(patch)] = patch

            def patch_it():
                try:
                    with open(m.mnt / name, "r+b") as out:
                        out.seek(at)
                        out.write(patch)
                    reader_result["patched"] = True
                except BaseException as error:
                    reader_result["error"] = error
            reader = threading.Thread(target=patch_it, daemon=True)
            reader.start()
            expected[name] = bytes(patched)
        elif step.startswith("fetch."):
            assert state.query("SELECT 1 FROM chunks WHERE state = 'fetching'")
            if step == "fetch.downloaded":
                assert any((m.cache / "tmp").iterdir()), "no verified temporary file was left"
        start_worker(m)

    if reader is not None:
        reader.join(timeout=60)
        assert not reader.is_alive(), "the read or write of an evicted chunk never returned after the restart"
        assert "error" not in reader_result, f"the read or write failed: {reader_result.get('error')!r}"
        if "data" in reader_result:
            assert digest(reader_result["data"]) == digest(expected[reader_result["name"]])
    if step != "gc.claimed":
        wait_until(lambda: "Recovered from an unclean stop" in m.worker_log(), 30,
                   "the restarted worker to report its recovery")
    finish_and_check(m, expected)
    counters = status_counters(m.zero("status", str(m.cache)).stdout)
    if step.startswith(("evict.", "fetch.")):
        assert counters["evictions"] > 0, counters
    if step.startswith("fetch."):
        assert counters["fault_ins"] > 0, counters


def test_fuse_killed_mid_upload_with_worker_running(make_mount):
    """kill -9 zero-fuse while writers are busy and the worker uploads (and evicts) what they
    wrote: every file whose close returned is intact after the remount, nothing is left
    half-done, and the worker carries on."""
    m = make_mount(worker=True, **CONFIG)
    state = State(m.cache)
    done: dict[str, bytes] = {}
    done_lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(tag: str) -> None:
        n = 0
        while not stop.is_set():
            name = f"{tag}-{n}"
            data = os.urandom(2 * CHUNK + (n * 7919) % CHUNK)
            try:
                with open(m.mnt / name, "wb") as out:
                    for start in range(0, len(data), 16 * KIB):
                        out.write(data[start:start + 16 * KIB])
                        out.flush()
            except OSError as error:
                if error.errno not in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO, errno.ENOENT):
                    errors.append(error)
                return  # zero-fuse died under this write: it never returned
            with done_lock:
                done[name] = data
            n += 1

    # Held open across the kill: its chunks are leased, its size only in zero-fuse's memory.
    held = open(m.mnt / "held-open", "wb", buffering=0)
    held_data = os.urandom(CHUNK + 4321)
    assert held.write(held_data) == len(held_data)
    threads = [threading.Thread(target=writer, args=(f"w{k}",), daemon=True) for k in range(2)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: state.query("SELECT 1 FROM chunks WHERE state = 'uploading'")
                   and status_counters(m.zero("status", str(m.cache)).stdout)["uploads"] >= 8,
                   60, "the worker to be uploading while the writers write")
    finally:
        stop.set()
        # kill -9 without unmounting yet, so that the writers fail on the dead mount
        # instead of writing into the bare mountpoint folder
        m.fuse.send_signal(signal.SIGKILL)
        m.fuse.wait()
        for thread in threads:
            thread.join(timeout=30)
        with contextlib.suppress(OSError):
            held.close()
    assert not errors, errors
    done["held-open"] = held_data
    m.kill_fuse()  # clears the dead mount
    assert len(done) >= 4, f"only {len(done)} files were written before the kill"

    m.start_fuse()
    assert "Recovered from an unclean stop: released" in m.fuse_log()  # at least held-open's lease
    assert m.worker.poll() is None, "the worker died with zero-fuse"
    finish_and_check(m, done)
