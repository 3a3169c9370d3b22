"""The writer lease: the small object ``<fs_id>/lock`` that names the one
machine writing a filesystem — its writer id, host, pid, cache folder, when
it started, its last heartbeat, the last metadata segment it stored, and
whether it stopped cleanly. Who may take it over is decided in
zero.meta.writer; this module only reads and writes the object."""

from __future__ import annotations

from dataclasses import dataclass, replace

from zero.remote import layout, records
from zero.remote.base import Remote

LEASE_FORMAT = 1


@dataclass(frozen=True)
class Lease:
    writer_id: str   # made at format or restore, kept in the cache's state
    host: str
    boot_id: str     # the kernel's boot id: same host and boot make its pid meaningful here
    pid: int
    cache: str
    started: float   # wall-clock seconds
    heartbeat: float
    sequence: int    # the last metadata segment this writer stored
    stopped: bool    # True after a clean stop (or a restore that has not started yet)
    format: int = LEASE_FORMAT
    taken_from: str = ""  # the writer id a `zero restore --force` took the filesystem from: never again its writer

    def encode(self) -> bytes:
        return records.encode(self)

    def beat(self, now: float, sequence: int, stopped: bool = False) -> Lease:
        return replace(self, heartbeat=now, sequence=sequence, stopped=stopped)


def decode(blob: bytes, key: str) -> Lease:
    return records.decode(Lease, blob, key, "writer lease", LEASE_FORMAT)


def read(remote: Remote, fs_id: str) -> Lease | None:
    """The remote's lease for ``fs_id``, or None when it has none.
    RemoteUnavailable passes through: an unreachable remote is not a free one."""
    return records.read(remote, layout.lock_key(fs_id), decode)


def write(remote: Remote, fs_id: str, lease: Lease) -> None:
    remote.put(layout.lock_key(fs_id), lease.encode())
