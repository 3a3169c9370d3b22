"""zero-worker's Prometheus endpoint (``metricsAddress``, default 127.0.0.1:9567).

Totals that the state already keeps (uploads, evictions, fault-ins, ...) and
the cache by chunk state are read from it at each scrape, so they agree with
`zero status` and survive a restart. zero-fuse's operations are among them:
zero-fuse counts in memory and adds its counts to the state each second
(zero.fuse.opstats). Per remote, each call is timed and counted where it
leaves the worker (zero.worker.remote_metrics).
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from zero.state import backlog, counters, fuseops
from zero.state.fuseops import LATENCY_BUCKETS_S as FUSE_BUCKETS_S
from zero.worker.context import WorkerContext
from zero.worker.usage import cache_usage

log = logging.getLogger(__name__)

# state counter -> (metric name, help)
STATE_COUNTERS = {
    "uploads": ("zero_uploads", "Chunks uploaded"),
    "uploaded_bytes": ("zero_uploaded_bytes", "Bytes uploaded (compressed and encrypted)"),
    "dedup_hits": ("zero_dedup_hits", "Chunks whose content a remote already held"),
    "evictions": ("zero_evictions", "Chunks evicted from the cache"),
    "fault_ins": ("zero_fetches", "Chunks fetched back into the cache"),
    "objects_collected": ("zero_objects_collected", "Unused remote objects deleted"),
    "fuse_read_bytes": ("zero_fuse_read_bytes", "Bytes read through the mount"),
    "fuse_written_bytes": ("zero_fuse_written_bytes", "Bytes written through the mount"),
    "fuse_reads_from_cache": ("zero_fuse_cache_hits", "Reads through the mount served from the cache"),
    "fuse_reads_faulted_in": ("zero_fuse_cache_misses", "Reads through the mount that waited for a fault-in"),
}


def parse_address(text: str) -> tuple[str, int] | None:
    """"host:port" (checked by zero.config) -> (host, port); "" -> None (no endpoint)."""
    if not text:
        return None
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


class _StateCollector:
    """Read at scrape time: the state's totals, the cache by chunk state, the backlog, remote health."""

    def __init__(self, context: WorkerContext):
        self.context = context

    def collect(self):
        with self.context.database.read() as connection:
            totals = counters.read_all(connection)
            by_state = backlog.counts_by_state(connection)
            waiting = backlog.unuploaded(connection)
            fuse = fuseops.read_all(connection)
            cache_bytes = cache_usage(connection, self.context.cache)
        for key, (name, text) in STATE_COUNTERS.items():
            family = CounterMetricFamily(name, text)
            family.add_metric([], totals.get(key, 0))
            yield family
        states = GaugeMetricFamily("zero_cache_chunks", "Chunks by state", labels=["state"])
        stored = GaugeMetricFamily("zero_cache_state_bytes", "Bytes of chunks by state", labels=["state"])
        for state, (count, size) in by_state.items():
            states.add_metric([state], count)
            stored.add_metric([state], size)
        yield states
        yield stored
        usage = GaugeMetricFamily("zero_cache_bytes", "Disk bytes the cache's chunk files use, as the worker "
                                  "counts them from its state (zero status walks the files)")
        usage.add_metric([], cache_bytes)
        yield usage
        target = GaugeMetricFamily("zero_cache_target_bytes", "targetDiskUsage the worker keeps to")
        target.add_metric([], self.context.config.target_disk_usage_bytes)
        yield target
        backlog_bytes = GaugeMetricFamily("zero_backlog_bytes", "Written bytes not uploaded yet")
        backlog_bytes.add_metric([], self.context.cache.bytes_of(waiting))
        yield backlog_bytes
        backlog_chunks = GaugeMetricFamily("zero_backlog_chunks", "Chunks not uploaded yet")
        backlog_chunks.add_metric([], len(waiting))
        yield backlog_chunks
        healthy = GaugeMetricFamily("zero_remote_healthy", "1 when the remote answers and is ours", labels=["remote"])
        for remote in self.context.pool.remotes:
            healthy.add_metric([remote.name], 1 if self.context.pool.health(remote.name) == "healthy" else 0)
        yield healthy
        yield from _fuse_families(fuse, totals)


def _fuse_families(ops: dict[str, fuseops.OpTotals], totals: dict[str, int]):
    calls = CounterMetricFamily("zero_fuse_ops", "FUSE operations zero-fuse answered", labels=["op"])
    errors = CounterMetricFamily("zero_fuse_op_errors", "FUSE operations answered with an error (a lookup's "
                                 "ENOENT too)", labels=["op"])
    latency = HistogramMetricFamily("zero_fuse_op_seconds", "Time zero-fuse took to answer a FUSE operation",
                                    labels=["op"])
    for op, counted in sorted(ops.items()):
        calls.add_metric([op], counted.calls)
        errors.add_metric([op], counted.errors)
        running, buckets = 0, []
        for le in FUSE_BUCKETS_S:
            running += counted.observations.get(le, 0)
            buckets.append((repr(le), running))
        latency.add_metric([op], buckets + [("+Inf", counted.calls)], sum_value=counted.seconds)
    yield calls
    yield errors
    yield latency
    hits, misses = totals.get("fuse_reads_from_cache", 0), totals.get("fuse_reads_faulted_in", 0)
    ratio = GaugeMetricFamily("zero_fuse_cache_hit_ratio", "Share of reads through the mount served from the "
                              "cache, since the cache was made (rates: zero_fuse_cache_hits_total)")
    ratio.add_metric([], hits / (hits + misses) if hits + misses else 1.0)
    yield ratio


class Metrics:
    """The endpoint: ``registry`` (which already holds the remotes' metrics,
    zero.worker.remote_metrics) plus what is read from the state at each scrape."""

    def __init__(self, context: WorkerContext, registry: CollectorRegistry):
        self.context = context
        self.registry = registry
        self.registry.register(_StateCollector(context))
        self._server = None

    def start(self, address: tuple[str, int]) -> None:
        host, port = address
        try:
            self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as error:
            log.warning("No metrics endpoint: cannot listen on %s:%d (%s); set metricsAddress to a free "
                        "host:port, or to \"\" for none", host, port, error.strerror)
            return
        log.info("Metrics for Prometheus at http://%s:%d/metrics", host, port)

    @property
    def listening(self) -> bool:
        return self._server is not None

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
