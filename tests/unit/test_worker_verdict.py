"""zero-fuse's reading of the running worker's verdict on its role (decision 108):
only a verdict that worker wrote counts, not one an earlier worker with the same
pid left behind (a container restarted gives pids out again)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from zero import wakeup
from zero.cachedir import CacheDir
from zero.fuse.worker_link import WorkerLink
from zero.meta import writer as writer_lease
from zero.state import db

HOLD_LOCK = ("import sys, time; from pathlib import Path; from zero.locking import PidLock; "
             "PidLock(Path(sys.argv[1]), 'zero-worker').acquire(); print('held', flush=True); time.sleep(60)")


@pytest.fixture
def link(tmp_path):
    cache = CacheDir(tmp_path / "cache")
    cache.prepare()
    database = db.open_database(cache.root / "state.sqlite3", 64 * 1024)
    yield WorkerLink(database, cache, wakeup.WakeListener(cache.wake, wakeup.FUSE), timeout_s=1.0)
    database.dispose()


@pytest.fixture
def worker_holding_the_lock(link):
    """A process holding the worker lock, as a running zero-worker does; its pid."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(link.cache.lock_path("worker"))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def record(link: WorkerLink, pid: int, role: str, at: float) -> None:
    with link.database.write() as connection:
        db.set_meta(connection, writer_lease.VERDICT_META,
                    json.dumps({"role": role, "message": f"{role} for a test", "pid": pid, "at": at}))


def test_the_running_workers_own_refusal_is_read(link, worker_holding_the_lock):
    record(link, worker_holding_the_lock, writer_lease.FENCED, time.time())
    assert link.refusal() == "fenced for a test"


def test_a_refusal_left_by_an_earlier_worker_with_the_same_pid_is_not_read(link, worker_holding_the_lock):
    locked_at = os.stat(link.cache.lock_path("worker")).st_mtime
    record(link, worker_holding_the_lock, writer_lease.FENCED, locked_at - 5)
    assert link.running_verdict() is None
    assert link.refusal() is None


def test_no_refusal_from_a_writer_nor_without_a_worker(link, worker_holding_the_lock):
    record(link, worker_holding_the_lock, writer_lease.WRITER, time.time())
    assert link.refusal() is None
    record(link, worker_holding_the_lock + 1, writer_lease.REFUSED, time.time())  # another process's verdict
    assert link.refusal() is None


def test_with_no_worker_the_last_ones_refusal_is_the_advice(link):
    """A refused worker exits when restarted under a mounted cache; fsync then said
    "start it", which would only be refused again (decision 108, review)."""
    assert "start it with: zero-worker" in link.why_no_answer("upload it")
    record(link, 4_000_000, writer_lease.REFUSED, time.time())  # a pid no process has
    why = link.why_no_answer("upload it")
    assert "uploaded nothing from this cache, because refused for a test" in why and "start it" not in why
    record(link, 4_000_000, writer_lease.WRITER, time.time())
    assert "start it with: zero-worker" in link.why_no_answer("upload it")
