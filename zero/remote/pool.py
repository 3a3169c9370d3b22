"""The configured remotes as one store that keeps ``replicas`` copies of each object.

The pool decides nothing by hashing keys: ``put`` says which remotes took a
copy, the caller records that as placement rows, and ``get``/``delete`` are
told which remotes hold one. Adding or draining a remote then moves nothing.

Each remote has a health, kept here in memory and published through
``on_health_change`` (the worker records it in the state and logs it, once
per change, not once per failed call):

- healthy: used for new objects and reads;
- unhealthy: its calls keep failing after their retries; no new objects go
  there, reads try it last, and the worker probes it on a schedule;
- unavailable: its marker is missing or foreign (zero.remote.identity), so
  it is not ours: never written into, never read from, never durable.

New objects go to the usable remotes with the most free quota (or, without
quotas, the least use per unit of weight), so remotes with quotas 1:2:3 fill
in that proportion.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from zero.errors import ConfigError, ObjectCorrupt, ObjectMissing, RemoteUnavailable
from zero.remote.base import Remote

log = logging.getLogger(__name__)

T = TypeVar("T")

HEALTHY = "healthy"
UNHEALTHY = "unhealthy"
UNAVAILABLE = "unavailable"
WEIGHT_UNIT_BYTES = 2**40  # without a quota, one unit of weight counts as this much room
LATENCY_SMOOTHING = 0.2    # weight of the newest read in a remote's moving average


@dataclass
class Member:
    """One remote in the pool and what the pool knows of it."""

    remote: Remote
    weight: float = 1.0
    quota_bytes: int | None = None
    bwlimit_bytes_per_s: int | None = None
    health: str = HEALTHY
    error: str | None = None
    draining: bool = False
    used_bytes: int = 0
    latency_s: float = 0.0

    @property
    def writable(self) -> bool:
        return self.health == HEALTHY and not self.draining

    def fullness(self) -> float:
        room = self.quota_bytes if self.quota_bytes is not None else self.weight * WEIGHT_UNIT_BYTES
        return self.used_bytes / room


class BandwidthLimit:
    """A token bucket of one second's worth of bytes per direction (rclone's --bwlimit)."""

    def __init__(self, bytes_per_s: int, clock=time.monotonic, sleep=time.sleep):
        self.bytes_per_s = bytes_per_s
        self._clock = clock
        self._sleep = sleep
        self._available = float(bytes_per_s)
        self._at = clock()
        self._lock = threading.Lock()

    def take(self, size: int) -> None:
        with self._lock:
            now = self._clock()
            self._available = min(self.bytes_per_s, self._available + (now - self._at) * self.bytes_per_s)
            self._at = now
            self._available -= size
            debt = -self._available
        if debt > 0:
            self._sleep(debt / self.bytes_per_s)  # pacing a transfer, not waiting for another thread


class RemotePool:
    def __init__(self, remotes: Sequence[Remote], replicas: int, settings: dict[str, dict] | None = None):
        names = [remote.name for remote in remotes]
        if len(set(names)) != len(names):
            raise ConfigError(f"remotes: each remote needs its own name, got {names}")
        if not 1 <= replicas <= len(remotes):
            raise ConfigError(f"replicas: must be between 1 and the number of remotes ({len(remotes)}), "
                              f"got {replicas}")
        self.remotes = list(remotes)
        self.replicas = replicas
        self._members = {remote.name: Member(remote, **(settings or {}).get(remote.name, {}))
                         for remote in self.remotes}
        self._listed = {name: position for position, name in enumerate(names)}  # ties go to the first listed
        self._limits = {name: BandwidthLimit(member.bwlimit_bytes_per_s)
                        for name, member in self._members.items() if member.bwlimit_bytes_per_s}
        self._lock = threading.Lock()
        self.on_health_change: Callable[[str, str, str | None], None] = lambda name, health, error: None

    # --- what the pool knows ------------------------------------------------------------

    def by_name(self, name: str) -> Remote:
        """The remote called ``name``. A placement row may name a remote since
        removed from the config; that copy is unreachable, hence RemoteUnavailable."""
        try:
            return self._members[name].remote
        except KeyError:
            raise RemoteUnavailable(f"no remote named {name!r} is configured (configured: "
                                    f"{', '.join(self._members)}); add it back to reach its objects") from None

    def member(self, name: str) -> Member | None:
        return self._members.get(name)

    def health(self, name: str) -> str:
        member = self._members.get(name)
        return member.health if member is not None else UNAVAILABLE

    def writable_names(self) -> list[str]:
        """Remotes new objects may go to now."""
        return [name for name, member in self._members.items() if member.writable]

    def durable_names(self) -> list[str]:
        """Remotes whose copies count as durable: configured, ours and healthy."""
        return [name for name, member in self._members.items() if member.health == HEALTHY]

    def set_health(self, name: str, health: str, error: str | None = None) -> None:
        member = self._members[name]
        with self._lock:
            changed = member.health != health
            member.health, member.error = health, error
        if changed:
            self.on_health_change(name, health, error)

    def set_draining(self, names: Sequence[str]) -> None:
        for name, member in self._members.items():
            member.draining = name in names

    def set_usage(self, used_bytes: dict[str, int]) -> None:
        """Bytes stored on each remote (from the placement rows), for placement."""
        with self._lock:
            for name, member in self._members.items():
                member.used_bytes = used_bytes.get(name, 0)

    def _failed(self, name: str, error: RemoteUnavailable) -> None:
        """A call failed after its retries: the remote is unhealthy until a probe says otherwise."""
        if self._members[name].health == HEALTHY:
            self.set_health(name, UNHEALTHY, str(error))

    def _paced(self, name: str, size: int) -> None:
        limit = self._limits.get(name)
        if limit is not None:
            limit.take(size)

    # --- the protocol -------------------------------------------------------------------

    def put(self, key: str, data: bytes, holders: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[str]:
        """Store copies until ``replicas`` usable remotes hold one, counting the
        ``holders`` that already do and never choosing ``exclude`` (a remote an
        object is moved off); returns the names that took a new copy, for
        the placement rows. Raises RemoteUnavailable if too few could; the copies
        made are then orphans for the collector (or a dedup hit next time)."""
        have = [name for name in holders if name in self._members and self._members[name].writable]
        wanted = self.replicas - len(have)
        with self._lock:
            candidates = sorted((member for name, member in self._members.items()
                                 if member.writable and name not in holders and name not in exclude
                                 and (member.quota_bytes is None or member.used_bytes + len(data) <= member.quota_bytes)),
                                key=Member.fullness)
        stored: list[str] = []
        refused: list[str] = []
        for member in candidates:
            if len(stored) >= wanted:
                break
            name = member.remote.name
            try:
                self._paced(name, len(data))
                member.remote.put(key, data)
            except RemoteUnavailable as error:
                self._failed(name, error)
                refused.append(f"{name} ({error})")
                continue
            with self._lock:
                member.used_bytes += len(data)
            stored.append(name)
        if len(stored) < wanted:
            unusable = [f"{name} ({member.health}{', draining' if member.draining else ''})"
                        for name, member in self._members.items() if not member.writable]
            raise RemoteUnavailable(
                f"stored {key} on {len(have) + len(stored)} of the {self.replicas} remotes that replicas asks for "
                f"(new copies on: {', '.join(stored) or 'none'}; refused: {'; '.join(refused) or 'none'}; "
                f"not usable now: {', '.join(unusable) or 'none'})")
        return stored

    def get(self, key: str, holders: Sequence[str], decode: Callable[[bytes], T] | None = None,
            suspect: Sequence[str] = (), on_copy: Callable[[str, Exception | None], None] | None = None) -> bytes | T:
        """The object from the fastest healthy holder that has it, falling back
        to the next; unhealthy holders last, ``suspect`` ones (copies known
        bad) after those, unavailable ones never. Equally fast holders (none
        read yet) are tried in the order the config lists them.

        ``decode`` (e.g. ``lambda blob: codec.open(blob, expected_key=key)``)
        runs on each copy, so a corrupt copy also falls back to the next holder;
        ``on_copy(name, error)`` hears of each copy read: the ObjectCorrupt or
        ObjectMissing of a bad one, None for the one that served.
        When all fail: RemoteUnavailable if any holder was unreachable (the
        object may come back), else the last ObjectMissing or ObjectCorrupt.
        """
        if not holders:
            raise ObjectMissing(f"no remote holds a copy of {key}")
        order = sorted(holders, key=lambda name: (name in suspect, self._read_order(name)))
        failures: list[Exception] = []
        for position, name in enumerate(order):
            try:
                member = self._members.get(name)
                if member is not None and member.health == UNAVAILABLE:
                    raise RemoteUnavailable(f"remote {name!r} is unavailable: {member.error}", transient=False)
                remote = self.by_name(name)
                started = time.monotonic()
                blob = remote.get(key)
                self._paced(name, len(blob))
                member.latency_s += LATENCY_SMOOTHING * (time.monotonic() - started - member.latency_s)
                value = decode(blob) if decode is not None else blob
                if on_copy is not None:
                    on_copy(name, None)
                return value
            except (RemoteUnavailable, ObjectMissing, ObjectCorrupt) as error:
                if isinstance(error, RemoteUnavailable) and name in self._members \
                        and self._members[name].health == HEALTHY:
                    self._failed(name, error)
                elif not isinstance(error, RemoteUnavailable) and on_copy is not None:
                    on_copy(name, error)
                if position < len(order) - 1:
                    log.debug("Could not read %s from remote %r, trying the next holder: %s", key, name, error)
                failures.append(error)
        unavailable = [error for error in failures if isinstance(error, RemoteUnavailable)]
        raise (unavailable[-1] if unavailable else failures[-1])

    def put_on(self, name: str, key: str, data: bytes) -> None:
        """Store a copy on the remote ``name`` itself (a repair puts a good copy
        where a bad one is); RemoteUnavailable if it is not writable or fails."""
        member = self._members.get(name)
        if member is None or not member.writable:
            why = "not configured" if member is None else f"{member.health}{', draining' if member.draining else ''}"
            raise RemoteUnavailable(f"remote {name!r} cannot take a copy of {key} now ({why})")
        try:
            self._paced(name, len(data))
            member.remote.put(key, data)
        except RemoteUnavailable as error:
            self._failed(name, error)
            raise

    def _read_order(self, name: str) -> tuple[int, float, int]:
        member = self._members.get(name)
        if member is None:
            return 3, 0.0, 0
        return {HEALTHY: 0, UNHEALTHY: 1}.get(member.health, 2), member.latency_s, self._listed[name]

    def delete(self, key: str, holders: Sequence[str]) -> None:
        """Delete every holder's copy. Raises RemoteUnavailable naming those that
        could not, after trying all; deleting again later is safe. A remote that
        is not ours (unavailable) is never touched."""
        refused = []
        for name in holders:
            try:
                if self.health(name) == UNAVAILABLE:
                    raise RemoteUnavailable(f"remote {name!r} is unavailable", transient=False)
                self.by_name(name).delete(key)
            except RemoteUnavailable as error:
                refused.append(f"{name} ({error})")
        if refused:
            raise RemoteUnavailable(f"could not delete {key} from: {'; '.join(refused)}")
