"""The remotes as fsck sees them: one listing of each remote a placement
names, taken only from a remote whose marker says it is this filesystem's
(an empty folder left by an unmounted drive must not make every object look
lost). A remote that cannot be listed is skipped and said so, never taken
for empty."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence

from sqlalchemy import Connection

from zero.errors import ObjectCorrupt, RemoteUnavailable
from zero.remote import identity, layout
from zero.remote.base import Remote
from zero.state import fsck as state_fsck
from zero.state import remotes as state_remotes


class Copy(enum.Enum):
    PRESENT = "present"   # a remote a placement names lists the object
    ABSENT = "absent"     # every remote that should hold it was listed, and none does
    UNKNOWN = "unknown"   # a remote that might hold it could not be listed


class RemoteView:
    def __init__(self, remotes: Sequence[Remote], fs_id: str, enabled: bool = True):
        self._configured = {remote.name: remote for remote in remotes}
        self.fs_id = fs_id
        self.enabled = enabled
        self.listed: dict[str, set[str]] = {}
        self.skipped: dict[str, str] = {}

    def load(self, connection: Connection) -> None:
        """List every remote a placement row names, once."""
        named = set().union(*state_fsck.placements(connection).values())
        recorded = {row.name: row.remote_id for row in state_remotes.all_rows(connection)}
        for name in sorted(named):
            reason = self._list(name, recorded.get(name)) if self.enabled else "--no-remote"
            if reason:
                self.skipped[name] = reason

    def _list(self, name: str, recorded_id: str | None) -> str:
        remote = self._configured.get(name)
        if remote is None:
            return "it is not in the config (add it back to check its objects)"
        try:
            marker = identity.read(remote, self.fs_id)
            if marker is None:
                return (f"its marker {layout.marker_key(self.fs_id)} is missing: wiped, swapped, or (a folder) "
                        "its drive is not mounted")
            if marker.fs_id != self.fs_id or (recorded_id and marker.remote_id != recorded_id):
                return f"it holds another remote's marker (id {marker.remote_id}): it was swapped"
            listing = set()
            for key, _size, _mtime in remote.list(layout.objects_prefix(self.fs_id)):
                digest = layout.parse_object_key(self.fs_id, key)
                if digest is not None:
                    listing.add(digest)
        except (RemoteUnavailable, ObjectCorrupt) as error:
            return f"it could not be listed: {error}"
        self.listed[name] = listing
        return ""

    def copy(self, key: str, holders: Iterable[str]) -> Copy:
        """Whether a remote that the placements name (``holders``) really holds ``key``."""
        holders = set(holders)
        if any(key in self.listed[name] for name in holders if name in self.listed):
            return Copy.PRESENT
        return Copy.UNKNOWN if holders - set(self.listed) else Copy.ABSENT

    def holds(self, name: str, key: str) -> bool | None:
        """Whether remote ``name`` lists ``key``; None when it was not listed."""
        return key in self.listed[name] if name in self.listed else None

    def skip_reason(self) -> str:
        if not self.enabled:
            return "skipped on request (--no-remote)"
        return "; ".join(f"remote {name!r} skipped: {reason}" for name, reason in sorted(self.skipped.items()))

    @property
    def skipped_on_request(self) -> bool:
        return not self.enabled
