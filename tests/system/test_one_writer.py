"""One writer per filesystem (issue 10): a second machine — here a second
cache restored from the same remote, with its own zero-worker and zero-fuse —
is refused while the first writes, naming it; a clean stop frees the
filesystem; a kill -9 leaves it refused until --force; a writer that was
taken over uploads and deletes nothing; `zero restore --at` is a read-only
copy of an older point unless --take-over."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from support import ZeroMount
from workerkit import State, remote_objects, wait_until

WRITER_LOG = ("being written by", "did not stop cleanly", "older than the filesystem", "Fenced:",
              "Took the filesystem over", "not mounted", "taken over from this cache")
PASSPHRASE = "one writer at a time"


def lease_of(remote: Path) -> dict:
    """The writer lease as the local-folder remote holds it (<fs_id>/lock)."""
    (path,) = Path(remote).glob("*/lock")
    return json.loads(path.read_bytes())


def backed_up(mount: ZeroMount) -> None:
    """Everything uploaded and a metadata segment covering every change."""
    mount.zero("sync", str(mount.mnt), timeout=120)
    state = State(mount.cache)
    wait_until(lambda: state.query("SELECT count(*) FROM changelog")[0][0] == 0 and not state.dirty_chunk_files(),
               60, "a metadata segment covering every change")


def verdict(mount: ZeroMount) -> dict:
    rows = State(mount.cache).query("SELECT value FROM meta WHERE key = 'writer_verdict'")
    return json.loads(rows[0][0]) if rows else {}


def beside(first: ZeroMount, name: str, **config) -> ZeroMount:
    """Another machine: its own folders, the first one's remote."""
    other = ZeroMount(first.root.parent / name, remotes=[{"name": "local", "type": "local",
                                                          "path": str(first.remote)}],
                      metadataBackupInterval=1, passphrase=PASSPHRASE, **config)
    other.allowed_log = first.allowed_log
    return other


@pytest.fixture
def machines(make_mount):
    made = []

    def factory(**config):
        first = make_mount(allowed_log=WRITER_LOG, metadataBackupInterval=1, passphrase=PASSPHRASE, **config)
        return first

    def another(first, name, **config):
        other = beside(first, name, **config)
        made.append(other)
        return other

    factory.another = another
    yield factory
    problems = []
    for other in made:
        other.close()
        problems += other.unexpected_log_lines(other.allowed_log)
    assert not problems, "zero logged unexpected warnings or errors:\n" + "\n".join(problems)


def test_a_second_machine_is_refused_naming_the_holder_until_it_stops_cleanly(machines):
    first = machines()
    (first.mnt / "a.txt").write_bytes(b"from the first machine\n")
    backed_up(first)
    assert lease_of(first.remote)["cache"] == str(first.cache)

    second = machines.another(first, "second")
    refused = second.zero("restore", str(second.cache), check=False)
    assert refused.returncode == 1
    assert f"being written by {socket.gethostname()} (cache {first.cache}" in refused.stderr
    assert "last heartbeat" in refused.stderr
    # --force never takes a live writer's filesystem.
    refused = second.zero("restore", str(second.cache), "--force", check=False)
    assert refused.returncode == 1 and "never taken over" in refused.stderr
    assert not (second.cache / "state.sqlite3").exists()

    first.unmount()
    assert first.stop_worker() == 0
    assert lease_of(first.remote)["stopped"] is True
    second.zero("restore", str(second.cache))
    second.start_worker()
    second.start_fuse()
    assert (second.mnt / "a.txt").read_bytes() == b"from the first machine\n"
    (second.mnt / "b.txt").write_bytes(b"from the second machine\n")
    backed_up(second)

    # The first machine comes back while the second writes: its zero-worker and its zero-fuse are refused.
    worker = first.start_worker()
    assert worker.wait(timeout=60) == 1
    assert f"being written by {socket.gethostname()} (cache {second.cache}" in first.worker_log()
    fuse = first.start_fuse(wait=False)
    assert fuse.wait(timeout=60) == 1
    assert f"zero-fuse: not mounted: zero-worker found that the filesystem is being written by " \
           f"{socket.gethostname()} (cache {second.cache}" in first.fuse_log()
    first.fuse = first.worker = None

    # The second stops cleanly; the first's copy is now older than the filesystem: refused as a fork.
    second.unmount()
    assert second.stop_worker() == 0
    worker = first.start_worker()
    assert worker.wait(timeout=60) == 1
    assert "older than the filesystem in the remotes" in first.worker_log()
    first.worker = None
    status = first.zero("status", str(first.cache)).stdout
    assert "NOT THE WRITER" in status and str(second.cache) in status


def test_a_killed_writer_is_taken_over_only_with_force(machines):
    first = machines()
    (first.mnt / "a.txt").write_bytes(b"written before the crash\n")
    backed_up(first)
    first.kill_worker()
    first.kill_fuse()

    second = machines.another(first, "second")
    refused = second.zero("restore", str(second.cache), check=False)
    assert refused.returncode == 1
    assert "did not stop cleanly" in refused.stderr and "--force" in refused.stderr
    assert str(first.cache) in refused.stderr
    taken = second.zero("restore", str(second.cache), "--force")
    assert f"Took the filesystem over from {socket.gethostname()} (cache {first.cache}" in taken.stdout
    second.start_worker()
    second.start_fuse()
    assert (second.mnt / "a.txt").read_bytes() == b"written before the crash\n"
    wait_until(lambda: lease_of(first.remote)["cache"] == str(second.cache)
               and not lease_of(first.remote)["stopped"], 30, "the second worker to hold the lease")


def test_a_machine_taken_over_with_force_does_not_take_the_filesystem_back(machines):
    """A red-team run: after `zero restore --force` on a second machine said "that
    machine, if it comes back, stops writing", the first machine's worker, restarted
    plainly, became the writer again and the second was refused."""
    first = machines()
    (first.mnt / "a.txt").write_bytes(b"from the first machine\n")
    backed_up(first)
    first.kill_worker()
    second = machines.another(first, "second")
    second.zero("restore", str(second.cache), "--force")
    for extra in ((), ("--force",)):
        worker = first.start_worker(*extra)
        assert worker.wait(timeout=60) == 1, first.worker_log()[-2000:]
        first.worker = None
    assert "taken over from this cache" in first.worker_log() and str(second.cache) in first.worker_log()
    second.start_worker()
    second.start_fuse()
    assert (second.mnt / "a.txt").read_bytes() == b"from the first machine\n"
    second.close()
    worker = first.start_worker()  # the second stopped cleanly: still not the first's again
    assert worker.wait(timeout=60) == 1
    first.worker = None


def test_a_writer_killed_before_its_first_heartbeat_leaves_no_room_for_a_fork(machines):
    """A red-team run: a second machine took over from a cleanly stopped first, wrote and
    fsynced, and was killed before its first heartbeat, so its lease still named the
    segment it had restored. The first machine's worker, started with --force, took the
    filesystem back and stored its segments under the numbers the second had used: a
    restore then lost fsynced files of both and read a splice of two machines' files.
    Now the lease names a writer's first segment before it is sent (decision 97), and
    the worker lists the remotes' newest segment before taking the lease (decision 94)."""
    first = machines()
    (first.mnt / "a.txt").write_bytes(b"from the first machine\n")
    backed_up(first)
    first.unmount()
    assert first.stop_worker() == 0
    # Its first heartbeat would be 15 minutes in: its lease keeps naming the segment it restored at.
    second = machines.another(first, "second", writerTimeout=3600)
    second.zero("restore", str(second.cache))
    second.start_worker()
    second.start_fuse()
    with open(second.mnt / "b.txt", "wb") as out:
        out.write(b"from the second machine, fsynced\n")
        out.flush()
        os.fsync(out.fileno())
    second.kill_worker()
    second.kill_fuse()
    stored = int(State(second.cache).query("SELECT value FROM meta WHERE key = 'backup_sequence'")[0][0])
    assert lease_of(first.remote)["sequence"] == stored, "the lease does not name the segment fsync waited for"

    worker = first.start_worker("--force")
    assert worker.wait(timeout=60) == 1, "the first machine took back a filesystem written since by another"
    assert "older than the filesystem in the remotes" in first.worker_log()
    first.worker = None
    third = machines.another(first, "third")
    third.zero("restore", str(third.cache), "--force")
    third.start_worker()
    third.start_fuse()
    assert (third.mnt / "b.txt").read_bytes() == b"from the second machine, fsynced\n"
    assert (third.mnt / "a.txt").read_bytes() == b"from the first machine\n"


def fsync_error(path) -> int | None:
    """The errno an fsync of ``path`` fails with; None if it succeeds."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.fsync(fd)
    except OSError as error:
        return error.errno
    finally:
        os.close(fd)
    return None


def test_a_writer_that_was_taken_over_uploads_and_deletes_nothing(machines):
    """The data-loss case: the first writer hangs (SIGSTOP: a suspended laptop, a
    partition) past writerTimeout, the second takes over with --force, the first
    wakes up. Without the fence its uploads and its collector would run on, and
    `zero gc` there would delete objects the second one's files need."""
    first = machines(writerTimeout=4, gcGracePeriod=0)
    shared = os.urandom(300_000)
    (first.mnt / "shared.bin").write_bytes(shared)
    backed_up(first)
    first.worker.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: time.time() - lease_of(first.remote)["heartbeat"] > 4.5, 30,
                   "the first writer's heartbeat to go stale")
        second = machines.another(first, "second", writerTimeout=4)
        second.zero("restore", str(second.cache), "--force")
        second.start_worker()
        second.start_fuse()
        assert (second.mnt / "shared.bin").read_bytes() == shared
        before = set(remote_objects(first.remote))
        # The first machine's mount still takes writes; its worker is asleep.
        (first.mnt / "new.bin").write_bytes(os.urandom(200_000))
        (first.mnt / "shared.bin").unlink()
    finally:
        first.worker.send_signal(signal.SIGCONT)
    wait_until(lambda: verdict(first).get("role") == "fenced", 30, "the first worker to find itself fenced")
    # It asked for the upload of new.bin by now if it were going to (uploadDelay 0.5 s): nothing left it.
    synced = first.zero("sync", str(first.mnt), "--timeout", "3", check=False)
    assert synced.returncode != 0
    gc = first.zero("gc", str(first.cache), "--delete", "--grace", "0", check=False)
    assert gc.returncode == 1 and "not the filesystem's writer" in gc.stderr
    assert set(remote_objects(first.remote)) == before
    assert State(first.cache).dirty_chunk_files()  # new.bin stays in the first cache only
    status = first.zero("status", str(first.cache)).stdout
    assert "FENCED" in status and str(second.cache) in status
    assert (second.mnt / "shared.bin").read_bytes() == shared
    # Neither an fsync nor the unmount waits for uploads a fenced worker never makes; both say why.
    first.allowed_log += ("uploads nothing from this cache", "was missed by", "fsync failed")
    assert fsync_error(first.mnt / "new.bin") == errno.EIO
    assert "zero-worker uploads nothing from this cache, because another machine has taken the filesystem over" \
        in first.fuse_log(), first.fuse_log()
    # Restarted, the worker is refused and exits; fsync then names that, not "start it" (which it was).
    first.stop_worker()
    restarted = first.start_worker(wait=False)
    assert restarted.wait(timeout=60) == 1
    first.worker = None
    assert fsync_error(first.mnt / "new.bin") == errno.EIO
    assert "zero-worker is not running, and the last one to run uploaded nothing from this cache, because" \
        in first.fuse_log(), first.fuse_log()
    first.unmount()
    assert "Unmounting without waiting for zero-worker: the last one to run uploads nothing from this cache, " \
           "because the filesystem was taken over" in first.fuse_log(), first.fuse_log()


def test_restore_at_is_read_only_and_shows_the_old_contents(machines):
    first = machines()
    (first.mnt / "notes.txt").write_bytes(b"version 1\n")
    backed_up(first)
    then = time.time()
    wait_until(lambda: time.time() > then + 1.1, 5, "a second to pass")  # mtimes of segments have 1 s steps
    (first.mnt / "notes.txt").write_bytes(b"version 2, later\n")
    (first.mnt / "later.txt").write_bytes(b"made later\n")
    backed_up(first)

    # While the first machine writes: a read-only copy of the older point needs no lease.
    old = machines.another(first, "old")
    result = old.zero("restore", str(old.cache), "--at", str(then))
    assert "read-only restore point" in result.stdout
    old.start_worker()
    old.start_fuse()
    assert (old.mnt / "notes.txt").read_bytes() == b"version 1\n"
    assert not (old.mnt / "later.txt").exists()
    with pytest.raises(OSError) as refused:
        (old.mnt / "notes.txt").write_bytes(b"changed")
    assert refused.value.errno == errno.EROFS
    assert verdict(old)["role"] == "read-only"
    assert lease_of(first.remote)["cache"] == str(first.cache)  # the first one still writes
    (first.mnt / "still.txt").write_bytes(b"the first one goes on\n")
    backed_up(first)

    # Taking the older point over as the writer needs the lease: refused while the first one runs.
    taker = machines.another(first, "taker")
    refused = taker.zero("restore", str(taker.cache), "--at", str(then), "--take-over", check=False)
    assert refused.returncode == 1 and "being written by" in refused.stderr
    first.unmount()
    first.stop_worker()
    taker.zero("restore", str(taker.cache), "--at", str(then), "--take-over")
    taker.start_worker()
    taker.start_fuse()
    assert (taker.mnt / "notes.txt").read_bytes() == b"version 1\n"
    (taker.mnt / "notes.txt").write_bytes(b"version 1, then changed\n")
    backed_up(taker)
    assert lease_of(first.remote)["cache"] == str(taker.cache)
