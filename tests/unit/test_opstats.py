"""zero-fuse's operation counts: counted in memory, added to the state by
publish(), read back as the worker's collector reads them."""

from __future__ import annotations

import errno
import logging

import pytest

from zero.errors import DiskFull, ZeroError
from zero.fuse.binding import FuseOSError
from zero.fuse.opstats import OpStats
from zero.fuse.translate import REMEMBERED_FAILURES, RepeatedFailures, translated
from zero.state import counters, db, fuseops


@pytest.fixture
def database(tmp_path):
    opened = db.open_database(tmp_path / "state.sqlite3", 256 * 1024)
    yield opened
    opened.dispose()


def totals(database):
    with database.read() as connection:
        return fuseops.read_all(connection), counters.read_all(connection)


def test_counts_reach_the_state_and_add_up_over_publishes(database):
    stats = OpStats(database)
    stats.record("write", 0.0003, False, 4096)
    stats.record("getattr", 0.00002, True)
    stats.publish()
    stats.record("write", 20.0, False, 100)  # slower than the last bucket: counted in calls only
    stats.waited_for_fault_in()
    stats.record("read", 1.2, False, b"x" * 10)
    stats.record("read", 0.0001, False, b"y" * 5)
    stats.publish()
    ops, count = totals(database)
    assert (ops["write"].calls, ops["write"].errors) == (2, 0) and ops["write"].seconds == pytest.approx(20.0003)
    assert ops["write"].observations == {0.0005: 1}
    assert (ops["getattr"].calls, ops["getattr"].errors) == (1, 1)
    assert ops["read"].observations == {2.5: 1, 0.0001: 1}
    assert count["fuse_written_bytes"] == 4196 and count["fuse_read_bytes"] == 15
    assert count["fuse_reads_faulted_in"] == 1 and count["fuse_reads_from_cache"] == 1


def test_a_failed_publish_keeps_the_counts_for_the_next(database, monkeypatch):
    stats = OpStats(database)
    stats.record("create", 0.001, False, (1, 1))

    def full(*_args, **_kwargs):
        raise DiskFull("the disk is full")

    monkeypatch.setattr(fuseops, "add", full)
    stats.publish()
    monkeypatch.undo()
    stats.record("create", 0.001, False, (2, 1))
    stats.publish()
    assert totals(database)[0]["create"].calls == 2


def test_a_failure_repeated_in_a_loop_is_logged_once_a_window_then_with_its_count():
    """A program retrying fsync on a fenced mount wrote an ERROR line per try."""
    now = [1000.0]
    repeated = RepeatedFailures(window_s=60.0, clock=lambda: now[0])
    fenced = "fsync failed: this machine is no longer the filesystem's writer"
    assert repeated.to_say(fenced) == [fenced]
    for _ in range(5):
        now[0] += 1.0
        assert repeated.to_say(fenced) == []
    assert repeated.to_say("read failed: chunk 3 of inode 7") == ["read failed: chunk 3 of inode 7"]  # another
    now[0] += 60.0
    assert repeated.to_say(fenced) == [f"{fenced} (5 more failure(s) like it since it was last logged)"]
    now[0] += 1.0
    assert repeated.to_say(fenced) == []


def test_many_different_failures_are_remembered_up_to_a_bound_and_each_costs_the_same():
    """Every fsync failing while zero-worker is down names its own inode: with
    thousands of them within the window, each new one rebuilt the whole table
    (33 s of CPU for 20,000, a review) and the table kept them all."""
    repeated = RepeatedFailures(window_s=60.0, clock=lambda: 1000.0, remembered=3)
    for ino in range(3):
        assert repeated.to_say(f"fsync failed: inode {ino}") == [f"fsync failed: inode {ino}"]
    assert repeated.to_say("fsync failed: inode 0") == []  # failed again: now the last to be forgotten
    assert repeated.to_say("fsync failed: inode 3") == ["fsync failed: inode 3"]  # inode 1 is forgotten, silently
    assert repeated.to_say("fsync failed: inode 4") == ["fsync failed: inode 4"]  # so is inode 2
    assert repeated.to_say("fsync failed: inode 5") == [  # inode 0 goes with what it was not allowed to say
        "fsync failed: inode 0 (1 more failure(s) like it since it was last logged)", "fsync failed: inode 5"]
    assert repeated.to_say("fsync failed: inode 1") == ["fsync failed: inode 1"]  # forgotten: said again
    assert len(repeated._said) == 3
    many = RepeatedFailures(window_s=60.0, clock=lambda: 1000.0)
    for ino in range(20_000):
        many.to_say(f"fsync failed: inode {ino}")
    assert len(many._said) == REMEMBERED_FAILURES


def test_the_fuse_border_logs_a_repeated_failure_once_and_still_fails_each_call(caplog):
    class Operations:
        tree = type("Tree", (), {"operation_started": lambda self: None,
                                 "operation_ended": lambda self, operation: None})()
        op_stats = type("Stats", (), {"record": lambda self, *args: None})()

        @translated
        def fsync(self):
            raise ZeroError("zero-worker refuses to write this filesystem")

    operations = Operations()
    with caplog.at_level(logging.ERROR, logger="zero.fuse.translate"):
        for _ in range(3):
            with pytest.raises(FuseOSError) as error:
                operations.fsync()
            assert error.value.errno == errno.EIO
    assert [record.getMessage() for record in caplog.records] == [
        "fsync failed: zero-worker refuses to write this filesystem"]
