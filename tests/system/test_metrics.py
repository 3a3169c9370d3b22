"""The worker's Prometheus endpoint, `zero stats` and `zero status --json`
(issue #12), on a real mount with a workload."""

from __future__ import annotations

import json
import os
import socket
import sqlite3

from zero.cli.stats import scrape, summary

from workerkit import drop_caches, wait_until

MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_files(mount, count: int, size: int) -> None:
    for number in range(count):
        (mount.mnt / f"file{number}").write_bytes(os.urandom(size))


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_the_metrics_endpoint_moves_during_a_workload(make_mount):
    address = f"127.0.0.1:{free_port()}"
    mount = make_mount(metricsAddress=address, chunkSize="256KiB")
    before = scrape(address)
    write_files(mount, 4, MIB)
    mount.zero("sync", str(mount.mnt))
    after = scrape(address)
    assert value(after, "zero_uploads_total") >= value(before, "zero_uploads_total") + 16
    assert value(after, "zero_uploaded_bytes_total") > value(before, "zero_uploaded_bytes_total")
    puts = "zero_remote_request_seconds_count"
    assert value(after, puts, remote="local", call="put") > value(before, puts, remote="local", call="put")
    assert value(after, "zero_remote_bytes_total", remote="local", direction="sent") > 0
    assert value(after, "zero_remote_healthy", remote="local") == 1
    assert value(after, "zero_cache_bytes") >= 4 * MIB
    assert value(after, "zero_backlog_chunks") == 0
    assert value(after, "zero_cache_chunks", state="clean") == 16

    # zero stats: a header naming the remote, then one line per sample.
    result = mount.zero("stats", str(mount.mnt), "--count", "2", "--interval", "0.1")
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and "local" in lines[0] and "ok" in lines[2], result.stdout


def test_fuse_operations_show_at_the_endpoint_while_a_workload_runs(make_mount):
    """zero-fuse counts in memory and adds its counts to the state each second; a
    scrape of the worker's endpoint during the workload sees them move."""
    address = f"127.0.0.1:{free_port()}"
    mount = make_mount(metricsAddress=address, chunkSize="256KiB")
    before = scrape(address)
    write_files(mount, 4, MIB)
    (mount.mnt / "missing").exists()  # a lookup that fails: ENOENT is counted as an error
    drop_caches(*(mount.mnt / f"file{number}" for number in range(4)))
    for number in range(4):
        (mount.mnt / f"file{number}").read_bytes()

    def moved():
        now = scrape(address)
        grew = {name: value(now, name) - value(before, name) for name in (
            "zero_fuse_written_bytes_total", "zero_fuse_read_bytes_total", "zero_fuse_cache_hits_total")}
        return (now, grew) if grew["zero_fuse_written_bytes_total"] >= 4 * MIB \
            and grew["zero_fuse_read_bytes_total"] >= 4 * MIB and grew["zero_fuse_cache_hits_total"] > 0 else None

    after, grew = wait_until(moved, 30, "the FUSE counters to reach the endpoint")
    for op in ("create", "write", "read", "getattr", "release"):
        assert value(after, "zero_fuse_ops_total", op=op) > value(before, "zero_fuse_ops_total", op=op), op
    assert value(after, "zero_fuse_ops_total", op="create") - value(before, "zero_fuse_ops_total", op="create") == 4
    assert value(after, "zero_fuse_op_errors_total", op="getattr") >= 1
    assert value(after, "zero_fuse_op_errors_total", op="write") == 0
    # The latency histogram: every write falls in some bucket, and its +Inf bucket counts them all.
    writes = value(after, "zero_fuse_ops_total", op="write")
    assert value(after, "zero_fuse_op_seconds_count", op="write") == writes
    assert value(after, "zero_fuse_op_seconds_bucket", op="write", le="+Inf") == writes
    assert 0 < value(after, "zero_fuse_op_seconds_sum", op="write")
    assert value(after, "zero_fuse_cache_misses_total") == 0, "every read was served from the cache"
    assert value(after, "zero_fuse_cache_hit_ratio") == 1.0

    # zero stats' arithmetic over the two scrapes: ops/s per op and the hit ratio.
    row = summary(after, before, 2.0)["fuse"]
    assert row["ops_by_name_per_s"]["create"] == 2.0 and row["hit_ratio"] == 1.0
    assert row["written_per_s"] >= 2 * MIB and row["ops_per_s"] > 0 and row["op_latency_ms"] > 0


def test_stats_says_when_there_is_no_endpoint(make_mount):
    mount = make_mount()  # metricsAddress: ""
    result = mount.zero("stats", str(mount.mnt), "--count", "1", check=False)
    assert result.returncode == 1 and "no metrics endpoint" in result.stderr


def test_status_json_parses_and_agrees_with_the_state(make_mount):
    mount = make_mount(chunkSize="256KiB")
    write_files(mount, 3, MIB // 2)
    mount.zero("sync", str(mount.mnt))
    report = json.loads(mount.zero("status", str(mount.mnt), "--json").stdout)
    database = sqlite3.connect(mount.cache / "state.sqlite3")
    try:
        by_state = dict(database.execute("SELECT state, count(*) FROM chunks GROUP BY state"))
    finally:
        database.close()
    assert {state: count for state, count in report["chunks"].items() if count} == by_state
    assert report["files"] == 3 and report["logical_bytes"] == 3 * (MIB // 2)
    assert report["backlog"] == {"bytes": 0, "chunks": 0}
    assert report["worker"]["pid"] == mount.worker.pid and report["fuse"]["pid"] == mount.fuse.pid
    assert [remote["name"] for remote in report["remotes"]] == ["local"]
    assert report["remotes"][0]["health"] == "healthy"
    assert report["totals"]["uploads"] == by_state["clean"]

    def creates_published():  # zero-fuse adds its counts to the state once a second
        ops = json.loads(mount.zero("status", str(mount.mnt), "--json").stdout)["fuse_ops"]
        return ops.get("create", {}).get("calls") == 3
    wait_until(creates_published, 30, "zero status --json to count the 3 creates")
    text = mount.zero("status", str(mount.mnt)).stdout
    assert "operations (" in text and "1.5 MiB written" in text, text
