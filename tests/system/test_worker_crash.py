"""kill -9 at every crash point of docs/dev/chunk_lifecycle.md, one test per row.

Each case writes its data, starts zero-worker (or, for the collector,
`zero gc`) with ZERO_TEST_PAUSE_AT=<step>, waits for it to pause at exactly
that step, checks what is on disk there, kills it with SIGKILL, restarts the
worker without the pause and checks what the lifecycle document promises:

- every write that returned is intact (read back after dropping the page cache);
- nothing is left ``uploading`` or ``fetching``;
- no chunk file without a row, no temporary fault-in file, and no ``clean`` or
  ``dirty`` row whose file is missing;
- after the collector ran (``zero gc --grace 0``) the remote holds no object the
  state does not know, and every object a chunk names is in the remote.

One test checks ZERO_TEST_CRASH_AT (the worker kills itself at the step), and
the last kill -9s zero-fuse while the worker is paused in the middle of
uploading what it writes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import sqlite3
import subprocess
import threading
from pathlib import Path

import pytest

from support import command
from workerkit import KIB, State, deleted_chunk_files_held, drop_caches, settle_evicted, status_counters, wait_until
from zero.crashpoints import STEPS
from zero.remote import layout

CHUNK = 64 * KIB
# faultInTimeout: a reader waits for its fault-in across a kill and a restart of the worker.
CONFIG = dict(chunkSize="64KiB", targetDiskUsage="1MiB", lowWatermark=0.5, uploadDelay=0, faultInTimeout=60)
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
    m.zero("gc", str(m.cache), "--grace", "0", "--delete", timeout=60)
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


class PausePoint:
    """A process started with ZERO_TEST_PAUSE_AT=<step> (zero/crashpoints.py)
    stops at the step and says so by writing a file; the test waits for that file,
    looks at the state at exactly that step, then kills -9 or releases it."""

    def __init__(self, m, step: str):
        self.step = step
        self.path = m.root / f"paused-at-{step}"
        self.env = {"ZERO_TEST_PAUSE_AT": step, "ZERO_TEST_PAUSE_FILE": str(self.path)}

    def wait(self, process: subprocess.Popen, what: str) -> None:
        wait_until(lambda: self.path.exists() or process.poll() is not None, DEATH_TIMEOUT_S,
                   f"{what} to pause at {self.step}")
        assert process.poll() is None, f"{what} exited with {process.returncode} before pausing at {self.step}"
        pid, step = self.path.read_text().split()
        assert (int(pid), step) == (process.pid, self.step), self.path.read_text()

    def release(self) -> None:
        self.path.unlink()


def kill_paused(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=DEATH_TIMEOUT_S) == -signal.SIGKILL


def metadata_sequences(remote: Path) -> list[int]:
    """The sequence of every metadata segment (snapshot or journal) in a local-folder remote."""
    found = []
    for path in Path(remote).glob("*/meta/**/*"):
        fs_id, key = path.relative_to(remote).parts[0], path.relative_to(remote).as_posix()
        sequence = layout.parse_snapshot_key(fs_id, key) or layout.parse_journal_key(fs_id, key)
        if sequence is not None:
            found.append(sequence)
    return sorted(found)


def chunk_file(m, ino: int, idx: int) -> Path:
    return m.cache / "chunks" / f"{ino % 256:02x}" / f"{ino}-{idx}"


def chunk_bytes(m, expected: dict[str, bytes], ino: int, idx: int) -> bytes:
    """What chunk ``idx`` of inode ``ino`` holds, from the bytes the test wrote."""
    name = next(n for n in expected if os.stat(m.mnt / n).st_ino == ino)
    return expected[name][idx * CHUNK:(idx + 1) * CHUNK]


def check_paused_state(m, step: str, expected: dict[str, bytes]) -> None:
    """What the row of docs/dev/chunk_lifecycle.md says is on disk right after the step
    (read while the process is paused there; nothing else moves the chunks)."""
    state = State(m.cache)
    rows = state.query("SELECT ino, idx, state, object_key FROM chunks")
    uploading = [(ino, idx) for ino, idx, st, _ in rows if st == "uploading"]
    intents = {key for (key,) in state.query("SELECT key FROM objects WHERE key NOT IN (SELECT key FROM placements)")}
    fetching = [(ino, idx) for ino, idx, st, _ in rows if st == "fetching"]
    if step == "upload.started":
        assert uploading, "no chunk is uploading at upload.started"
        assert not intents and not object_files(m.remote), "something was recorded or sent before upload.intent"
    elif step == "upload.intent":
        assert uploading and intents, f"uploading {uploading}, intents {intents}"
        assert not object_files(m.remote), "an object was sent before upload.sent"
    elif step == "upload.sent":
        assert uploading and intents, f"uploading {uploading}, intents {intents}"
        assert intents <= set(object_files(m.remote)), "an object whose intent is recorded was not sent"
        assert not state.query("SELECT 1 FROM placements"), "a placement was committed before the group finished"
    elif step == "evict.unlinked":
        missing = [(ino, idx) for ino, idx, st, _ in rows if st == "clean" and not chunk_file(m, ino, idx).exists()]
        assert len(missing) == 1, f"expected one clean chunk without its file mid-eviction, found {missing}"
        assert "remote" not in {st for _, _, st, _ in rows}, "an eviction committed before the paused one"
    elif step == "fetch.started":
        assert fetching, "no chunk is fetching at fetch.started"
        assert not any((m.cache / "tmp").iterdir()), "a temporary file exists before anything was downloaded"
    elif step == "fetch.downloaded":
        assert fetching, "no chunk is fetching at fetch.downloaded"
        temporary = list((m.cache / "tmp").iterdir())
        assert temporary, "no verified temporary file at fetch.downloaded"
        for path in temporary:
            ino, idx = map(int, path.name.removesuffix(".fetch").split("-"))
            assert (ino, idx) in fetching, f"{path.name} is not for a fetching chunk"
            assert path.read_bytes() == chunk_bytes(m, expected, ino, idx), f"{path.name} holds the wrong bytes"
    elif step == "fetch.renamed":
        placed = [(ino, idx) for ino, idx in fetching if chunk_file(m, ino, idx).exists()]
        assert placed, f"no fetching chunk has its file in place at fetch.renamed (fetching: {fetching})"
        for ino, idx in placed:
            assert chunk_file(m, ino, idx).read_bytes() == chunk_bytes(m, expected, ino, idx)
    elif step == "gc.claimed":
        pass  # checked by the caller, which knows which objects were doomed
    elif step == "meta.stored":
        committed = int(state.query("SELECT value FROM meta WHERE key = 'backup_sequence'")[0][0]
                        if state.query("SELECT 1 FROM meta WHERE key = 'backup_sequence'") else 0)
        stored = metadata_sequences(m.remote)
        assert stored and max(stored) == committed + 1, f"committed {committed}, in the remote {stored}"
    else:
        raise AssertionError(f"no check for the crash point {step}: add one")


@pytest.mark.parametrize("step", STEPS)
def test_worker_killed_at_crash_point_recovers(make_mount, step):
    """The process pauses at exactly ``step``; the test checks the state there, kills
    it with SIGKILL, restarts the worker and checks recovery and every byte."""
    # A metadata segment a second after the first change, instead of a minute.
    m = make_mount(worker=False, **CONFIG, **({"metadataBackupInterval": 1} if step.startswith("meta.") else {}))
    state = State(m.cache)
    pause = PausePoint(m, step)
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
        gc = subprocess.Popen([command("zero"), "gc", str(m.cache), "--grace", "0", "--delete"], env={**m.env, **pause.env},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            pause.wait(gc, "zero gc")
            # The copies are still there, their rows gone: exactly the orphans the sweep must find.
            unknown = set(object_files(m.remote)) - {k for (k,) in state.query("SELECT key FROM objects")}
            assert len(unknown) == 4 and unknown <= objects_before, (unknown, objects_before)
        finally:
            kill_paused(gc)
    else:
        # Everything is written before the pausing worker starts: a worker paused inside a
        # write transaction (evict.unlinked, fetch.renamed) holds zero-fuse's writes back.
        expected = write_dataset(m, count=6 if step.startswith(("evict.", "fetch.")) else 4)
        if step.startswith("fetch."):
            # ~2 MiB against a 1 MiB target: a plain worker uploads and evicts, then stops.
            start_worker(m)
            wait_until(lambda: len(evicted_chunks(m)) >= 4, 30, "the worker to evict some chunks")
            assert m.stop_worker() == 0, m.worker_log()[-3000:]
            # zero-fuse would serve the evicted chunk from its descriptor on the unlinked file
            # (correct, but no fault-in) until its flusher lets go of such descriptors
            wait_until(lambda: deleted_chunk_files_held(m.fuse.pid, m.cache)[0] == 0, 30,
                       "zero-fuse to close its descriptors on evicted chunk files")
            ino, _ = evicted_chunks(m)[0]
            name = next(n for n in expected if os.stat(m.mnt / n).st_ino == ino)
            drop_caches(m.mnt / name)
        worker = start_worker(m, env=pause.env)
        try:
            if step.startswith("fetch."):
                def read_back():  # waits for the fault-in across the pause, the kill and the restart
                    try:
                        reader_result["data"] = (m.mnt / name).read_bytes()
                    except BaseException as error:
                        reader_result["error"] = error
                reader_result["name"] = name
                reader = threading.Thread(target=read_back, daemon=True)
                reader.start()
            pause.wait(worker, "zero-worker")
            check_paused_state(m, step, expected)
        finally:
            kill_paused(worker)
            m.worker = None
        if step == "evict.unlinked":
            # A write to that chunk before the worker is back must not re-create the file
            # empty (losing the rest of the chunk): it waits for the recovery and a fault-in.
            ino, idx = next((ino, idx) for ino, idx in state.query(
                "SELECT ino, idx FROM chunks WHERE state = 'clean'") if not chunk_file(m, ino, idx).exists())
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
        start_worker(m)

    if reader is not None:
        reader.join(timeout=60)
        assert not reader.is_alive(), "the read or write of an evicted chunk never returned after the restart"
        assert "error" not in reader_result, f"the read or write failed: {reader_result.get('error')!r}"
        if "data" in reader_result:
            assert digest(reader_result["data"]) == digest(expected[reader_result["name"]])
        if step == "evict.unlinked":
            assert reader_result.get("patched"), reader_result
    if step == "meta.stored":
        wait_until(lambda: "never recorded; storing a full snapshot" in m.worker_log(), 30,
                   "the restarted worker to store a snapshot after the segment it never recorded")
    elif step != "gc.claimed":
        wait_until(lambda: "Recovered from an unclean stop" in m.worker_log(), 30,
                   "the restarted worker to report its recovery")
    finish_and_check(m, expected)
    counters = status_counters(m.zero("status", str(m.cache)).stdout)
    if step.startswith(("evict.", "fetch.")):
        assert counters["evictions"] > 0, counters
    if step.startswith("fetch."):
        assert counters["fault_ins"] > 0, counters


def test_crash_at_makes_the_worker_kill_itself_at_the_step(make_mount):
    """ZERO_TEST_CRASH_AT, the other mode of the crash points: the worker dies by SIGKILL
    at the step, with the step's state left behind, and recovers on restart."""
    m = make_mount(worker=False, **CONFIG)
    expected = write_dataset(m, count=2)
    # It may reach the step before a test could see it running: wait for its death, not its start.
    worker = m.start_worker(env={"ZERO_TEST_CRASH_AT": "upload.intent"}, wait=False)
    wait_killed(worker, "zero-worker with ZERO_TEST_CRASH_AT=upload.intent")
    m.worker = None
    check_paused_state(m, "upload.intent", expected)
    start_worker(m)
    wait_until(lambda: "Recovered from an unclean stop" in m.worker_log(), 30,
               "the restarted worker to report its recovery")
    finish_and_check(m, expected)


def test_fuse_killed_mid_upload_with_worker_running(make_mount):
    """kill -9 zero-fuse while writers are busy and the worker is in the middle of an upload
    (paused at upload.sent: objects stored, chunks still uploading): every file whose close
    returned is intact after the remount, nothing is left half-done, and the worker carries on."""
    m = make_mount(worker=False, **CONFIG)
    state = State(m.cache)
    pause = PausePoint(m, "upload.sent")
    worker = start_worker(m, env=pause.env)
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
        pause.wait(worker, "zero-worker")
        assert state.query("SELECT 1 FROM chunks WHERE state = 'uploading'"), "paused at upload.sent, nothing uploading"
        wait_until(lambda: len(done) >= 4, 60, "the writers to close four files")
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
        pause.release()  # the worker finishes its upload with zero-fuse dead
    assert not errors, errors
    done["held-open"] = held_data
    m.kill_fuse()  # clears the dead mount
    wait_until(lambda: not state.query("SELECT 1 FROM chunks WHERE state = 'uploading'"), 30,
               "the released worker to finish the upload it was in")
    assert status_counters(m.zero("status", str(m.cache)).stdout)["uploads"] > 0

    m.start_fuse()
    assert "Recovered from an unclean stop: released" in m.fuse_log()  # at least held-open's lease
    assert m.worker.poll() is None, "the worker died with zero-fuse"
    finish_and_check(m, done)


def an_uploaded_file(m, name: str) -> tuple[bytes, int, State]:
    """Start the worker, write a file of several chunks and wait until all are clean."""
    start_worker(m)
    data = os.urandom(5 * CHUNK + 100)
    write_file(m.mnt / name, data)
    m.zero("sync", str(m.mnt), timeout=60)
    ino = os.stat(m.mnt / name).st_ino
    state = State(m.cache)
    wait_until(lambda: set(state.chunks_of(ino).values()) == {"clean"}, 30, "every chunk to be uploaded")
    return data, ino, state


def power_cut_and_restart(m, state: State, ino: int) -> None:
    """Stop both processes, then leave what a power cut would: the chunk files' sizes
    were committed by the journal, their bytes were still in the page cache (zeros
    now). The machine boots again (another boot id) and zero starts."""
    assert m.stop_worker() == 0, m.worker_log()[-3000:]
    m.unmount()
    for idx in state.chunks_of(ino):
        path = chunk_file(m, ino, idx)
        path.write_bytes(bytes(path.stat().st_size))
    database = sqlite3.connect(m.cache / "state.sqlite3")
    with database:
        database.execute("UPDATE meta SET value = 'the boot before the power cut' WHERE key = 'boot_id'")
    database.close()
    m.start_fuse()
    start_worker(m)


def test_a_power_cut_after_fault_ins_loses_nothing(make_mount):
    """Fault-ins do not sync the files they write either (decision 76): after a power cut
    the chunks just faulted in are read back from the remote, not served from files
    that lost their bytes."""
    m = make_mount(worker=False, chunkSize="64KiB", uploadDelay=0, targetDiskUsage="1MiB")
    data, ino, state = an_uploaded_file(m, "film.mkv")
    # Evict it all (a worker with a tiny target), then read it back through fault-ins.
    assert m.stop_worker() == 0, m.worker_log()[-3000:]
    m.config_path.write_text(m.config_path.read_text().replace("targetDiskUsage: 1MiB", "targetDiskUsage: 1KiB"))
    start_worker(m)
    wait_until(lambda: set(state.chunks_of(ino).values()) == {"remote"}, 30, "every chunk to be evicted")
    assert m.stop_worker() == 0, m.worker_log()[-3000:]
    m.config_path.write_text(m.config_path.read_text().replace("targetDiskUsage: 1KiB", "targetDiskUsage: 1MiB"))
    start_worker(m)
    settle_evicted(m, m.mnt / "film.mkv")
    assert (m.mnt / "film.mkv").read_bytes() == data
    wait_until(lambda: set(state.chunks_of(ino).values()) == {"clean"}, 30, "every chunk faulted in")
    power_cut_and_restart(m, state, ino)
    drop_caches(m.mnt / "film.mkv")
    assert (m.mnt / "film.mkv").read_bytes() == data, "zero served the zeros the power cut left"


def test_a_power_cut_that_took_uploaded_chunk_files_from_the_page_cache_loses_nothing(make_mount):
    """The uploader does not sync a chunk's file before marking it clean (decision 73): a
    power cut soon after can leave clean rows over files that lost their bytes. On the
    next boot zero reads those chunks back from the remote instead of serving the files."""
    m = make_mount(worker=False, chunkSize="64KiB", uploadDelay=0)
    data, ino, state = an_uploaded_file(m, "photo.raw")
    power_cut_and_restart(m, state, ino)
    drop_caches(m.mnt / "photo.raw")
    assert (m.mnt / "photo.raw").read_bytes() == data, "zero served the zeros the power cut left"
    assert "will be read back from the remotes" in m.fuse_log() + m.worker_log()
