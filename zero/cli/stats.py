"""`zero stats <mount or cache>`: one line per interval, like `juicefs stats`,
read from the running worker's metrics endpoint (its address is in the
heartbeat): FUSE operations a second with their mean latency, bytes read and
written through the mount and the share of reads the cache served, the cache
against its target, the backlog, upload, fetch and eviction rates, per remote
the calls, their latency and errors, and the busiest FUSE operations."""

from __future__ import annotations

import sys
import time
import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

from zero.cli.common import find_cache, human, open_state
from zero.errors import ZeroError
from zero.locking import holder_pid
from zero.state.db import worker_status

HEADER_EVERY = 20
BUSIEST_OPS = 3


def metrics_address(location: str, config) -> str:
    cache, _ = find_cache(location)
    if holder_pid(cache.lock_path("worker")) is None:
        raise ZeroError(f"zero-worker is not running for {cache.root}; zero stats reads its metrics endpoint")
    database = open_state(cache, config)
    try:
        with database.read() as connection:
            status = worker_status(connection)
    finally:
        database.dispose()
    address = status.get("metrics_address")
    if not address:
        raise ZeroError("the running zero-worker has no metrics endpoint (metricsAddress is \"\" or was busy; "
                        "see its log); set metricsAddress and restart it")
    return address


def scrape(address: str) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} from one scrape."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _by_label(samples, name: str, label: str) -> dict[str, float]:
    found: dict[str, float] = defaultdict(float)
    for (sample, labels), value in samples.items():
        if sample == name:
            found[dict(labels).get(label, "")] += value
    return found


def _rates_by(now: dict, before: dict | None, seconds: float, name: str, label: str) -> dict[str, float]:
    if before is None or seconds <= 0:
        return {}
    earlier = _by_label(before, name, label)
    return {key: max(0.0, value - earlier.get(key, 0.0)) / seconds
            for key, value in _by_label(now, name, label).items()}


def _fuse_summary(now: dict, before: dict | None, seconds: float, rate) -> dict:
    ops = _rates_by(now, before, seconds, "zero_fuse_ops_total", "op")
    count = sum(ops.values())
    spent = sum(_rates_by(now, before, seconds, "zero_fuse_op_seconds_sum", "op").values())
    hits, misses = rate("zero_fuse_cache_hits_total"), rate("zero_fuse_cache_misses_total")
    return {
        "ops_per_s": count, "op_latency_ms": 1000 * spent / count if count else 0.0,
        "ops_by_name_per_s": {op: value for op, value in sorted(ops.items(), key=lambda item: -item[1]) if value},
        "read_per_s": rate("zero_fuse_read_bytes_total"), "written_per_s": rate("zero_fuse_written_bytes_total"),
        "hit_ratio": hits / (hits + misses) if hits + misses else None,
    }


def summary(now: dict, before: dict | None, seconds: float) -> dict:
    """What one line shows: levels from ``now``, rates against ``before``."""
    def value(name, **labels):
        return now.get((name, tuple(sorted(labels.items()))), 0.0)

    def rate(name, **labels):
        if before is None or seconds <= 0:
            return 0.0
        key = (name, tuple(sorted(labels.items())))
        return max(0.0, now.get(key, 0.0) - before.get(key, 0.0)) / seconds

    remotes = {}
    for remote in sorted(_by_label(now, "zero_remote_healthy", "remote")):
        calls = {call for (name, labels), _ in now.items() if name == "zero_remote_request_seconds_count"
                 and dict(labels).get("remote") == remote for call in [dict(labels)["call"]]}
        count = sum(rate("zero_remote_request_seconds_count", remote=remote, call=c) for c in calls)
        spent = sum(rate("zero_remote_request_seconds_sum", remote=remote, call=c) for c in calls)
        remotes[remote] = {
            "healthy": bool(value("zero_remote_healthy", remote=remote)),
            "calls_per_s": count, "latency_ms": 1000 * spent / count if count else 0.0,
            "errors_per_s": sum(rate("zero_remote_errors_total", remote=remote, call=c) for c in calls),
            "sent_per_s": rate("zero_remote_bytes_total", remote=remote, direction="sent"),
            "read_per_s": rate("zero_remote_bytes_total", remote=remote, direction="read"),
        }
    return {
        "cache_bytes": value("zero_cache_bytes"), "target_bytes": value("zero_cache_target_bytes"),
        "backlog_bytes": value("zero_backlog_bytes"), "backlog_chunks": value("zero_backlog_chunks"),
        "upload_per_s": rate("zero_uploaded_bytes_total"), "uploads_per_s": rate("zero_uploads_total"),
        "fetches_per_s": rate("zero_fetches_total"), "evictions_per_s": rate("zero_evictions_total"),
        "uploads": value("zero_uploads_total"), "fetches": value("zero_fetches_total"), "remotes": remotes,
        "fuse": _fuse_summary(now, before, seconds, rate),
    }


def _header(remotes) -> str:
    top = f"{'time':8} {'--fuse (ops/s, ms, read/s, write/s, hit)--':>49} {'--cache (used/target)--':>24} " \
          f"{'--backlog--':>18} {'--upload--':>19} {'fetch':>7} {'evict':>7}"
    for name in remotes:
        top += f"  {('-- ' + name + ' (calls/s, ms, err/s) --'):>32}"
    return top + "  busiest ops/s"


def _line(row) -> str:
    fuse = row["fuse"]
    hit = "-" if fuse["hit_ratio"] is None else f"{100 * fuse['hit_ratio']:.0f}%"
    text = (f"{time.strftime('%H:%M:%S')} {fuse['ops_per_s']:>7.0f} {fuse['op_latency_ms']:>7.2f}ms "
            f"{human(fuse['read_per_s']) + '/s':>12} {human(fuse['written_per_s']) + '/s':>12} {hit:>5} "
            f"{human(row['cache_bytes']):>10} / {human(row['target_bytes']):>10} "
            f"{human(row['backlog_bytes']):>10} {row['backlog_chunks']:>5.0f}ch "
            f"{human(row['upload_per_s']) + '/s':>12} {row['uploads_per_s']:>5.0f}/s "
            f"{row['fetches_per_s']:>5.0f}/s {row['evictions_per_s']:>5.0f}/s")
    for remote in row["remotes"].values():
        health = "ok" if remote["healthy"] else "DOWN"
        text += f"  {health:>4} {remote['calls_per_s']:>6.1f} {remote['latency_ms']:>6.1f}ms " \
                f"{remote['errors_per_s']:>4.1f} {human(remote['sent_per_s']) + '/s':>11}"
    busiest = list(fuse["ops_by_name_per_s"].items())[:BUSIEST_OPS]
    return (text + "  " + " ".join(f"{op} {value:.0f}" for op, value in busiest)).rstrip()


def stats(args, config) -> int:
    address = metrics_address(args.location, config)
    before, before_at, shown = None, 0.0, 0
    try:
        while args.count is None or shown < args.count:
            now, now_at = scrape(address), time.monotonic()
            row = summary(now, before, now_at - before_at)
            if shown % HEADER_EVERY == 0:
                print(_header(row["remotes"]))
            print(_line(row), flush=True)
            shown += 1
            before, before_at = now, now_at
            if args.count is None or shown < args.count:
                time.sleep(args.interval)  # a display refresh, not a synchronisation
    except KeyboardInterrupt:
        pass
    except OSError as error:
        print(f"zero: the worker's metrics endpoint {address} stopped answering ({error})", file=sys.stderr)
        return 1
    return 0
