"""Per remote: the latency of each call, the calls that failed, the bytes
sent and read, counted by a wrapper that keeps the Remote protocol.

The wiring puts ``RemoteMetrics.wrap`` around each remote (outside the retry
wrapper, so a call's time includes its retries) when it builds the worker's
pool; the worker's metrics endpoint serves the registry.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram

from zero.remote.base import Remote

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class RemoteMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.latency = Histogram("zero_remote_request_seconds", "Time of one call to a remote, retries included",
                                 ["remote", "call"], registry=registry, buckets=LATENCY_BUCKETS_S)
        self.errors = Counter("zero_remote_errors", "Calls to a remote that failed after their retries",
                              ["remote", "call"], registry=registry)
        self.transferred = Counter("zero_remote_bytes", "Bytes sent to or read from a remote",
                                   ["remote", "direction"], registry=registry)

    def wrap(self, remote: Remote) -> Remote:
        return MeteredRemote(remote, self)


class MeteredRemote(Remote):
    """``inner``, with each put, get, head and delete timed and counted. Same
    name and protocol; the inner remote's attributes stay reachable."""

    def __init__(self, inner: Remote, metrics: RemoteMetrics):
        self.inner = inner
        self.name = inner.name
        self.kind = inner.kind
        self._latency = {call: metrics.latency.labels(inner.name, call) for call in ("put", "get", "head", "delete")}
        self._errors = {call: metrics.errors.labels(inner.name, call) for call in self._latency}
        self._sent = metrics.transferred.labels(inner.name, "sent")
        self._read = metrics.transferred.labels(inner.name, "read")

    def __getattr__(self, attribute: str):
        if attribute == "inner":
            raise AttributeError(attribute)
        return getattr(self.inner, attribute)

    def prepare(self) -> None:
        self.inner.prepare()

    def put(self, key: str, data: bytes) -> None:
        self._timed("put", self.inner.put, key, data)
        self._sent.inc(len(data))

    def get(self, key: str) -> bytes:
        data = self._timed("get", self.inner.get, key)
        self._read.inc(len(data))
        return data

    def head(self, key: str) -> int | None:
        return self._timed("head", self.inner.head, key)

    def delete(self, key: str) -> None:
        self._timed("delete", self.inner.delete, key)

    def list(self, prefix: str = "") -> Iterator[tuple[str, int, float]]:
        return self.inner.list(prefix)

    def is_transient(self, error: BaseException) -> bool:
        return self.inner.is_transient(error)

    def __repr__(self) -> str:
        return repr(self.inner)

    def _timed(self, call: str, method, *args):
        started = time.perf_counter()
        try:
            return method(*args)
        except Exception:
            self._errors[call].inc()
            raise
        finally:
            self._latency[call].observe(time.perf_counter() - started)
