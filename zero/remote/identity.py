"""A remote's marker: the small object that says "this remote belongs to
filesystem F, and is remote R of it". Written at first use; read at every
start and health check. A remote whose marker is missing, unreadable, or
names another id is not ours: zero never writes into it and never counts a
copy there as durable (a renamed-away folder, an unmounted drive, a wiped or
swapped bucket all look like this)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass

from zero.errors import ObjectCorrupt, ObjectMissing
from zero.remote import layout
from zero.remote.base import Remote

MARKER_FORMAT = 1


@dataclass(frozen=True)
class Marker:
    fs_id: str
    remote_id: str
    format: int
    created: float

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()


def new_marker(fs_id: str) -> Marker:
    return Marker(fs_id=fs_id, remote_id=uuid.uuid4().hex, format=MARKER_FORMAT, created=time.time())


def decode(blob: bytes, key: str) -> Marker:
    try:
        fields = json.loads(blob)
        marker = Marker(fs_id=str(fields["fs_id"]), remote_id=str(fields["remote_id"]),
                        format=int(fields["format"]), created=float(fields["created"]))
    except (ValueError, KeyError, TypeError):
        raise ObjectCorrupt(f"the marker {key} is not a zero marker (damaged, or written by something else)") \
            from None
    if marker.format > MARKER_FORMAT:
        raise ObjectCorrupt(f"the marker {key} has format {marker.format}, newer than this zero knows "
                            f"({MARKER_FORMAT}); upgrade zero")
    return marker


def read(remote: Remote, fs_id: str) -> Marker | None:
    """The remote's marker for ``fs_id``, or None when it has none.
    RemoteUnavailable passes through: an unreachable remote is not an empty one."""
    key = layout.marker_key(fs_id)
    try:
        return decode(remote.get(key), key)
    except ObjectMissing:
        return None


def write(remote: Remote, marker: Marker) -> None:
    remote.prepare()
    remote.put(layout.marker_key(marker.fs_id), marker.encode())
