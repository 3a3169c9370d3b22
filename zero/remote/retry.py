"""One retry policy for every remote: a wrapper that keeps the Remote protocol.

It retries exactly the failures the wrapped remote calls transient
(``Remote.is_transient``), with exponential backoff and full jitter, a
bounded number of attempts and a bounded total time. Anything else (a
missing object, refused credentials, a bad key) passes through at once.
The SDKs' own retries are turned off or down to one attempt, so this is the
only budget (see docs/decisions.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, stop_after_delay
from tenacity.wait import wait_random_exponential

from zero.remote.base import Remote

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetrySettings:
    attempts: int = 5             # calls in all, the first one included
    first_wait_s: float = 0.5     # the backoff's scale; each wait is random in [0, scale * 2**n]
    max_wait_s: float = 8.0       # no single wait is longer
    total_s: float = 30.0         # no new attempt starts after this long since the first


class RetryingRemote(Remote):
    """``inner`` with its transient failures retried. Same name and protocol;
    the inner remote's own attributes (a local folder's ``root``) stay
    reachable, so code holding a pool's remote need not unwrap it."""

    def __init__(self, inner: Remote, settings: RetrySettings = RetrySettings(),
                 sleep: Callable[[float], None] = time.sleep):
        self.inner = inner
        self.name = inner.name
        self.kind = inner.kind
        self.settings = settings
        self._sleep = sleep

    def __getattr__(self, attribute: str):
        # Only reached for attributes this wrapper lacks.
        if attribute == "inner":
            raise AttributeError(attribute)
        return getattr(self.inner, attribute)

    def prepare(self) -> None:
        self._call("prepare", "(the remote itself)", self.inner.prepare)

    def put(self, key: str, data: bytes) -> None:
        self._call("store", key, lambda: self.inner.put(key, data))

    def get(self, key: str) -> bytes:
        return self._call("read", key, lambda: self.inner.get(key))

    def head(self, key: str) -> int | None:
        return self._call("look up", key, lambda: self.inner.head(key))

    def delete(self, key: str) -> None:
        self._call("delete", key, lambda: self.inner.delete(key))

    def list(self, prefix: str = "") -> Iterator[tuple[str, int, float]]:
        # A listing that fails half-way is retried whole, so it is gathered
        # before the first entry is handed out: no entry is given twice.
        yield from self._call("list", prefix or "(everything)", lambda: list(self.inner.list(prefix)))

    def is_transient(self, error: BaseException) -> bool:
        return self.inner.is_transient(error)

    def __repr__(self) -> str:
        return repr(self.inner)

    def _call(self, verb: str, key: str, call: Callable[[], T]) -> T:
        settings = self.settings
        retrying = Retrying(
            retry=retry_if_exception(self.inner.is_transient),
            stop=stop_after_attempt(settings.attempts) | stop_after_delay(settings.total_s),
            wait=wait_random_exponential(multiplier=settings.first_wait_s, max=settings.max_wait_s),
            sleep=self._sleep,
            before_sleep=lambda state: self._log_retry(verb, key, state),
            reraise=True,
        )
        return retrying(call)

    def _log_retry(self, verb: str, key: str, state: RetryCallState) -> None:
        wait_s = state.next_action.sleep if state.next_action else 0.0
        # Debug only: a flaky remote retries often; the pool logs its change of health once.
        log.debug("Remote %r: could not %s %s (%s); trying again in %.1f s (attempt %d of at most %d)",
                 self.name, verb, key, state.outcome.exception(), wait_s, state.attempt_number + 1,
                 self.settings.attempts)
