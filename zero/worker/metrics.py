"""zero-worker's Prometheus endpoint (``metricsAddress``, default 127.0.0.1:9567).

Totals that the state already keeps (uploads, evictions, fault-ins, ...) and
the cache by chunk state are read from it at each scrape, so they agree with
`zero status` and survive a restart. Per remote, each call is timed and
counted where it leaves the worker: the pool's remotes get timed methods.
FUSE operations are not counted here: zero-fuse has no endpoint (yet).
"""

from __future__ import annotations

import functools
import logging
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from zero.state import chunks, counters
from zero.worker.context import WorkerContext

log = logging.getLogger(__name__)

# state counter -> (metric name, help)
STATE_COUNTERS = {
    "uploads": ("zero_uploads", "Chunks uploaded"),
    "uploaded_bytes": ("zero_uploaded_bytes", "Bytes uploaded (compressed and encrypted)"),
    "dedup_hits": ("zero_dedup_hits", "Chunks whose content a remote already held"),
    "evictions": ("zero_evictions", "Chunks evicted from the cache"),
    "fault_ins": ("zero_fetches", "Chunks fetched back into the cache"),
    "objects_collected": ("zero_objects_collected", "Unused remote objects deleted"),
}
TIMED_CALLS = ("put", "get", "head", "delete")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


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
            by_state = chunks.counts_by_state(connection)
            waiting = chunks.unuploaded(connection)
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
        usage = GaugeMetricFamily("zero_cache_bytes", "Disk bytes the cache's chunk files use")
        usage.add_metric([], self.context.cache.usage().total_bytes)
        yield usage
        target = GaugeMetricFamily("zero_cache_target_bytes", "targetDiskUsage the worker keeps to")
        target.add_metric([], self.context.config.target_disk_usage_bytes)
        yield target
        backlog = GaugeMetricFamily("zero_backlog_bytes", "Written bytes not uploaded yet")
        backlog.add_metric([], self.context.cache.bytes_of(waiting))
        yield backlog
        backlog_chunks = GaugeMetricFamily("zero_backlog_chunks", "Chunks not uploaded yet")
        backlog_chunks.add_metric([], len(waiting))
        yield backlog_chunks
        healthy = GaugeMetricFamily("zero_remote_healthy", "1 when the remote answers and is ours", labels=["remote"])
        for remote in self.context.pool.remotes:
            healthy.add_metric([remote.name], 1 if self.context.pool.health(remote.name) == "healthy" else 0)
        yield healthy


class Metrics:
    def __init__(self, context: WorkerContext):
        self.context = context
        self.registry = CollectorRegistry()
        self.latency = Histogram("zero_remote_request_seconds", "Time of one call to a remote, retries included",
                                 ["remote", "call"], registry=self.registry, buckets=LATENCY_BUCKETS)
        self.errors = Counter("zero_remote_errors", "Calls to a remote that failed after their retries",
                              ["remote", "call"], registry=self.registry)
        self.transferred = Counter("zero_remote_bytes", "Bytes sent to or read from a remote",
                                   ["remote", "direction"], registry=self.registry)
        self.registry.register(_StateCollector(context))
        self._server = None

    def instrument(self) -> None:
        """Time every call the pool makes to each remote."""
        for remote in self.context.pool.remotes:
            for call in TIMED_CALLS:
                setattr(remote, call, self._timed(remote.name, call, getattr(remote, call)))

    def _timed(self, name: str, call: str, method):
        latency = self.latency.labels(name, call)
        errors = self.errors.labels(name, call)
        sent = self.transferred.labels(name, "sent")
        read = self.transferred.labels(name, "read")

        @functools.wraps(method)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                result = method(*args, **kwargs)
            except Exception:
                errors.inc()
                raise
            finally:
                latency.observe(time.perf_counter() - started)
            if call == "put":
                sent.inc(len(args[1]) if len(args) > 1 else len(kwargs.get("data", b"")))
            elif call == "get" and isinstance(result, (bytes, bytearray, memoryview)):
                read.inc(len(result))
            return result
        return timed

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
