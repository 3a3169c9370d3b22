"""A remote's marker: the small object that says "this remote belongs to
filesystem F, and is remote R of it". Written at first use; read at every
start and health check. A remote whose marker is missing, unreadable, or
names another id is not ours: zero never writes into it and never counts a
copy there as durable (a renamed-away folder, an unmounted drive, a wiped or
swapped bucket all look like this)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from zero.remote import layout, records
from zero.remote.base import Remote

MARKER_FORMAT = 1


@dataclass(frozen=True)
class Marker:
    fs_id: str
    remote_id: str
    format: int
    created: float

    def encode(self) -> bytes:
        return records.encode(self)


def new_marker(fs_id: str) -> Marker:
    return Marker(fs_id=fs_id, remote_id=uuid.uuid4().hex, format=MARKER_FORMAT, created=time.time())


def decode(blob: bytes, key: str) -> Marker:
    return records.decode(Marker, blob, key, "marker", MARKER_FORMAT)


def read(remote: Remote, fs_id: str) -> Marker | None:
    """The remote's marker for ``fs_id``, or None when it has none.
    RemoteUnavailable passes through: an unreachable remote is not an empty one."""
    return records.read(remote, layout.marker_key(fs_id), decode)


def write(remote: Remote, marker: Marker) -> None:
    remote.prepare()
    remote.put(layout.marker_key(marker.fs_id), marker.encode())
