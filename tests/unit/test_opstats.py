"""zero-fuse's operation counts: counted in memory, added to the state by
publish(), read back as the worker's collector reads them."""

from __future__ import annotations

import pytest

from zero.errors import DiskFull
from zero.fuse.opstats import OpStats
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
