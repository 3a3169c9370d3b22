"""The writer lease: the small object ``<fs_id>/lock`` that names the one
machine writing a filesystem — its writer id, host, pid, cache folder, when
it started, its last heartbeat, the last metadata segment it stored, and
whether it stopped cleanly. Who may take it over is decided in
zero.meta.writer; this module only reads and writes the object."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

from zero.errors import ObjectCorrupt, ObjectMissing
from zero.remote import layout
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

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    def beat(self, now: float, sequence: int, stopped: bool = False) -> Lease:
        return replace(self, heartbeat=now, sequence=sequence, stopped=stopped)


def decode(blob: bytes, key: str) -> Lease:
    try:
        fields = json.loads(blob)
        lease = Lease(writer_id=str(fields["writer_id"]), host=str(fields["host"]), boot_id=str(fields["boot_id"]),
                      pid=int(fields["pid"]), cache=str(fields["cache"]), started=float(fields["started"]),
                      heartbeat=float(fields["heartbeat"]), sequence=int(fields["sequence"]),
                      stopped=bool(fields["stopped"]), format=int(fields["format"]))
    except (ValueError, KeyError, TypeError):
        raise ObjectCorrupt(f"the writer lease {key} is not a zero lease (damaged, or written by something else)") \
            from None
    if lease.format > LEASE_FORMAT:
        raise ObjectCorrupt(f"the writer lease {key} has format {lease.format}, newer than this zero knows "
                            f"({LEASE_FORMAT}); upgrade zero")
    return lease


def read(remote: Remote, fs_id: str) -> Lease | None:
    """The remote's lease for ``fs_id``, or None when it has none.
    RemoteUnavailable passes through: an unreachable remote is not a free one."""
    key = layout.lock_key(fs_id)
    try:
        return decode(remote.get(key), key)
    except ObjectMissing:
        return None


def write(remote: Remote, fs_id: str, lease: Lease) -> None:
    remote.put(layout.lock_key(fs_id), lease.encode())
