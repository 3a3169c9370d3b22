"""Config that behaves (issue #12): SIGHUP / `zero reload` changes the running
worker's settings and says which need a restart; `zero status` shows the
settings in use; gc without --delete is a dry run; unpin of a file never
pinned says so."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time

import yaml

MIB = 1024 * 1024
DEADLINE_S = 60.0


def set_config(mount, **changes) -> None:
    config = yaml.safe_load(mount.config_path.read_text())
    config.update(changes)
    mount.config_path.write_text(yaml.safe_dump(config))


def status(mount) -> dict:
    return json.loads(mount.zero("status", str(mount.mnt), "--json").stdout)


def test_reload_with_a_smaller_target_makes_the_worker_evict_down_to_it(make_mount):
    mount = make_mount(chunkSize="256KiB", targetDiskUsage="64M", lowWatermark=0.5)
    for number in range(4):
        (mount.mnt / f"f{number}").write_bytes(os.urandom(2 * MIB))
    mount.zero("sync", str(mount.mnt))
    assert status(mount)["cache_bytes"] >= 8 * MIB
    set_config(mount, targetDiskUsage="2M", faultInTimeout="20s")
    said = mount.zero("reload", str(mount.mnt)).stdout
    assert "targetDiskUsage: 64 MiB -> 2 MiB" in said
    assert "faultInTimeout" in said and "remount" in said  # zero-fuse's setting waits for a remount
    deadline = time.monotonic() + DEADLINE_S
    while (report := status(mount))["cache_bytes"] > 2 * MIB:
        assert time.monotonic() < deadline, f"the worker did not evict down to 2 MiB: {report}"
        time.sleep(0.1)  # eviction gives a test no event; the state is looked at again
    assert report["worker"]["settings"]["targetDiskUsage"] == 2 * MIB
    assert report["target_bytes"] == 2 * MIB
    assert "targetDiskUsage 2.0 MiB" in mount.zero("status", str(mount.mnt)).stdout
    assert "Reloaded" in mount.worker_log()
    assert (mount.mnt / "f0").stat().st_size == 2 * MIB
    assert len((mount.mnt / "f3").read_bytes()) == 2 * MIB  # evicted data faults back in


def worker_heartbeat(mount) -> dict:
    database = sqlite3.connect(mount.cache / "state.sqlite3")
    try:
        row = database.execute("SELECT value FROM meta WHERE key = 'worker_status'").fetchone()
    finally:
        database.close()
    return json.loads(row[0]) if row else {}


def test_a_config_that_does_not_load_changes_nothing(make_mount):
    mount = make_mount(targetDiskUsage="1G")
    mount.config_path.write_text("targetDiskUsage: [\n")
    refused = mount.zero("reload", str(mount.cache), check=False)
    assert refused.returncode == 1 and "does not parse" in refused.stderr  # said before asking the worker
    os.kill(mount.worker.pid, signal.SIGHUP)  # the worker asked directly keeps what it has
    deadline = time.monotonic() + DEADLINE_S
    while (heartbeat := worker_heartbeat(mount)).get("reloads", 0) < 1:
        assert time.monotonic() < deadline, "the worker did not answer SIGHUP"
        time.sleep(0.1)  # the heartbeat row gives no event
    assert "Not reloaded" in heartbeat["reload_messages"][0]
    assert heartbeat["settings"]["targetDiskUsage"] == 1024**3
    assert mount.worker.poll() is None


def test_gc_without_delete_is_a_dry_run(make_mount):
    mount = make_mount(chunkSize="256KiB")
    (mount.mnt / "doomed").write_bytes(os.urandom(MIB))
    mount.zero("sync", str(mount.mnt))
    (mount.mnt / "doomed").unlink()
    objects_before = status(mount)["remote_objects"]
    said = mount.zero("gc", str(mount.cache), "--grace", "1h").stdout
    assert "Dry run" in said and "would delete: 0" in said and "waiting out the grace period: 4 object(s)" in said
    said = mount.zero("gc", str(mount.cache), "--grace", "0").stdout
    assert "would delete: 0" in said  # never stamped unused yet: the grace period has not started
    assert status(mount)["remote_objects"] == objects_before  # a dry run deletes nothing
    said = mount.zero("gc", str(mount.cache), "--grace", "0", "--delete").stdout
    assert "Deleted" in said
    assert status(mount)["remote_objects"] == objects_before - 4


def test_unpin_of_a_file_never_pinned_says_so(make_mount):
    mount = make_mount()
    (mount.mnt / "pinned").write_text("a")
    (mount.mnt / "loose").write_text("b")
    assert "Pinned 1 path(s)" in mount.zero("pin", str(mount.mnt / "pinned")).stdout
    said = mount.zero("unpin", str(mount.mnt / "loose")).stdout
    assert "was not pinned" in said and "Unpinned" not in said
    said = mount.zero("unpin", str(mount.mnt / "pinned"), str(mount.mnt / "loose")).stdout
    assert "Unpinned 1 path(s)" in said and "loose was not pinned" in said
