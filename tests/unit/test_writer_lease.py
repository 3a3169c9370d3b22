"""The writer lease: who may take it (judge), and the fence of a writer that
was taken over, driven on real SQLite states and a local-folder remote with
injected clocks (nothing sleeps)."""

from __future__ import annotations

import socket

import pytest

from zero.errors import NotTheWriter, RemoteUnavailable
from zero.meta import writer
from zero.remote import layout, writerlease
from zero.remote.local import LocalRemote
from zero.state import db as state_db

FS = "f" * 32
TIMEOUT = 120.0


def lease(writer_id="other", heartbeat=1000.0, sequence=5, stopped=False, host="elsewhere", pid=1):
    return writerlease.Lease(writer_id=writer_id, host=host, boot_id="b", pid=pid, cache="/c", started=900.0,
                             heartbeat=heartbeat, sequence=sequence, stopped=stopped)


def test_judge_names_the_holder_and_allows_only_what_is_safe():
    assert writer.judge(None, "me", 0, 1000, TIMEOUT, force=False) is None
    assert writer.judge(lease(writer_id="me"), "me", 0, 1000, TIMEOUT, force=False) is None  # ours: a restart
    live = writer.judge(lease(heartbeat=990), "me", 5, 1000, TIMEOUT, force=True)
    assert "being written by elsewhere (cache /c, pid 1)" in live and "last heartbeat 10s ago" in live
    assert "never taken over" in live  # --force does not take a live writer
    dead = writer.judge(lease(heartbeat=800), "me", 5, 1000, TIMEOUT, force=False)
    assert "did not stop cleanly" in dead and "--force" in dead
    assert writer.judge(lease(heartbeat=800), "me", 5, 1000, TIMEOUT, force=True) is None
    # A cleanly stopped writer leaves the filesystem free, unless it stored metadata this cache lacks.
    assert writer.judge(lease(stopped=True), "me", 5, 1000, TIMEOUT, force=False) is None
    assert "fork" in writer.judge(lease(stopped=True, sequence=9), "me", 5, 1000, TIMEOUT, force=True)
    assert "fork" in writer.judge(lease(heartbeat=800, sequence=9), "me", 5, 1000, TIMEOUT, force=True)


def test_a_writer_on_this_machine_whose_process_is_gone_is_dead_at_once():
    gone = lease(heartbeat=999.0, host=socket.gethostname(), pid=2**22 + 1)  # above pid_max's default
    gone = writerlease.Lease(**{**gone.__dict__, "boot_id": writer.boot_id()})
    assert not writer.is_alive(gone, 1000.0, TIMEOUT)
    assert writer.judge(gone, "me", 5, 1000.0, TIMEOUT, force=True) is None


@pytest.fixture
def remote(tmp_path):
    return LocalRemote("a", tmp_path / "remote")


def make_writer(tmp_path, name, remote, clock, ticker):
    database = state_db.open_database(tmp_path / f"{name}.sqlite3")
    return writer.Writer(database, FS, tmp_path / name, TIMEOUT, lambda: [remote], clock=clock, ticker=ticker)


def test_a_writer_that_was_taken_over_is_fenced_and_says_so(tmp_path, remote):
    remote.prepare()
    now = [1000.0]
    clock = lambda: now[0]  # noqa: E731
    first = make_writer(tmp_path, "first", remote, clock, clock)
    assert first.start() == writer.WRITER and first.may_write()
    second = make_writer(tmp_path, "second", remote, clock, clock)
    with pytest.raises(NotTheWriter, match="being written by"):
        second.start()
    assert writer.read_verdict(second.database)["role"] == writer.REFUSED
    # The first is silent past the timeout (a suspended laptop): the second may take over with --force.
    now[0] += TIMEOUT + 1
    assert second.start(force=True) == writer.WRITER
    # The first wakes: its confirmation is too old to trust, so it looks, and stops writing for good.
    assert not first.may_write()
    assert first.role == writer.FENCED
    assert writer.read_verdict(first.database)["role"] == writer.FENCED
    assert not first.confirm_now()
    first.heartbeat()
    first.release()  # a fenced writer leaves the new writer's lease alone
    assert writerlease.read(remote, FS).writer_id == writer.writer_id(second.database)
    second.release()
    held = writerlease.read(remote, FS)
    assert held.stopped and held.writer_id == writer.writer_id(second.database)
    assert remote.get(layout.lock_key(FS))  # the lease stays after a clean stop, marked stopped


def test_a_writer_trusts_its_lease_for_half_the_timeout_only(tmp_path, remote):
    remote.prepare()
    now = [1000.0]
    clock = lambda: now[0]  # noqa: E731
    first = make_writer(tmp_path, "first", remote, clock, clock)
    first.start()
    now[0] += TIMEOUT / 2 - 1
    # Another writes the lease behind its back (a takeover it has not looked at yet).
    writerlease.write(remote, FS, lease(heartbeat=now[0]))
    assert first.may_write()  # still inside its window: no remote read on the hot path
    now[0] += 2
    assert not first.may_write() and first.role == writer.FENCED


def test_no_remote_answering_leaves_the_writer_pending_until_one_does(tmp_path):
    missing = LocalRemote("a", tmp_path / "not-there")  # never prepared: every call fails
    now = [1000.0]
    clock = lambda: now[0]  # noqa: E731
    first = make_writer(tmp_path, "first", missing, clock, clock)
    assert first.start() == writer.PENDING and not first.may_write()
    missing.prepare()
    first.heartbeat()
    assert first.role == writer.WRITER and first.may_write()


def test_a_damaged_or_newer_lease_is_refused_not_guessed_at():
    from zero.errors import ObjectCorrupt

    good = lease().encode()
    assert writerlease.decode(good, "k") == lease()
    with pytest.raises(ObjectCorrupt, match="not a zero writer lease"):
        writerlease.decode(good.replace(b'"pid": 1', b'"pid": "one"'), "k")
    with pytest.raises(ObjectCorrupt, match="newer than this zero knows"):
        writerlease.decode(good.replace(b'"format": 1', b'"format": 9'), "k")


def test_the_lease_names_a_writers_first_segment_at_once(tmp_path, remote):
    """A writer killed between its first segment and its first heartbeat left a lease
    naming the segment it started from, so another cache as far along took over without
    seeing the fork (a red-team run; decision 94). The first segment is named at once;
    the later ones wait for the heartbeats (a PUT per fsync would double the metadata's)."""
    remote.prepare()
    now = [1000.0]
    writing = make_writer(tmp_path, "writing", remote, lambda: now[0], lambda: now[0])
    assert writing.start() == writer.WRITER
    assert writerlease.read(remote, FS).sequence == 0
    writing.segment_stored(3)
    assert writerlease.read(remote, FS).sequence == 3
    writing.segment_stored(4)
    assert writerlease.read(remote, FS).sequence == 3
    other = make_writer(tmp_path, "other", remote, lambda: now[0] + TIMEOUT * 2, lambda: now[0] + TIMEOUT * 2)
    with pytest.raises(NotTheWriter, match="fork"):
        other.start(force=True)  # its pid is this one's, alive: judged by the heartbeat, stale; but forked


def test_a_cache_restored_without_a_remote_waits_until_that_remote_is_listed(tmp_path, remote):
    """Decision 100, and a review of it: the wait ended as soon as the remote looked
    healthy, even when listing its metadata failed; and `zero gc --delete` did not wait
    at all. Both wait until the remote's metadata has been listed."""
    remote.prepare()
    now = [1000.0]
    restored = make_writer(tmp_path, "restored", remote, lambda: now[0], lambda: now[0])
    with restored.database.write() as connection:
        state_db.set_meta(connection, writer.RESTORED_WITHOUT_META, "a")
    with pytest.raises(NotTheWriter, match="did not answer"):
        writer.check_one_shot(restored.database, [remote], FS)
    listing = remote.list
    remote.list = lambda prefix="": (_ for _ in ()).throw(RemoteUnavailable("timed out"))
    assert restored.start() == writer.PENDING and "did not answer" in restored.message
    remote.list = listing
    restored.heartbeat()
    assert restored.role == writer.WRITER
    writer.check_one_shot(restored.database, [remote], FS)  # checked now: gc may run


def test_segments_in_the_remotes_newer_than_this_cache_are_a_fork_whatever_the_lease_says(tmp_path, remote):
    """The lease says what its holder had stored when it last beat; the remotes say what is
    there. A cache that stored (or tried) up to 1 finding segment 7 is refused (decision 94)."""
    remote.prepare()
    remote.put(layout.journal_key(FS, 7), b"another cache's segment")
    now = [1000.0]
    behind = make_writer(tmp_path, "behind", remote, lambda: now[0], lambda: now[0])
    with behind.database.write() as connection:
        state_db.set_meta(connection, writer.SEQUENCE_META, "1")
    with pytest.raises(NotTheWriter, match="older than the filesystem in the remotes.*up to segment 7"):
        behind.start(force=True)
    with behind.database.write() as connection:
        state_db.set_meta(connection, writer.ATTEMPT_META, "7")  # its own attempt: not a fork
    assert behind.start() == writer.WRITER
