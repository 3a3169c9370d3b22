"""The worker's Prometheus endpoint, `zero stats` and `zero status --json`
(issue #12), on a real mount with a workload."""

from __future__ import annotations

import json
import os
import socket
import sqlite3

from zero.cli.stats import scrape

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
