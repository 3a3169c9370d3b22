"""Knowing the remotes: whose they are, whether they answer, what they hold.

At start and then on a schedule the worker reads each remote's marker
(zero.remote.identity) and compares it with the id the state recorded at
first use:

- no record yet, no marker: the remote is new to this filesystem; zero
  prepares it (a local folder is created now, and never again) and writes a
  marker. A remote that zero stored objects on before markers existed is
  adopted only if it still holds some of them;
- record and matching marker: healthy;
- record but no marker, or another id: unavailable. The folder was renamed
  away, its drive is not mounted, the bucket was wiped or swapped. Nothing
  is written there, no copy there counts as durable, and the log and
  `zero status` say so;
- a remote that does not answer is unhealthy and is probed again later.

Each change of health is one log line and one row in the state, never one
line per failed call.
"""

from __future__ import annotations

import logging

from zero.errors import ObjectCorrupt, RemoteUnavailable, ZeroError
from zero.remote import identity, layout
from zero.remote.base import Remote
from zero.remote.pool import HEALTHY, UNAVAILABLE, UNHEALTHY
from zero.state import chunks, objects, remotes
from zero.worker.context import WorkerContext

log = logging.getLogger(__name__)

PROBE_INTERVAL_S = 10.0  # how often unhealthy and unavailable remotes are looked at again
HEALTHY_PROBE_EVERY = 6  # healthy ones every sixth time (a minute): one marker read each


class RemoteKeeper:
    def __init__(self, context: WorkerContext):
        self.context = context
        self.pool = context.pool
        self.pool.on_health_change = self._record_health
        self._probes = 0

    def start(self) -> None:
        """At worker start: refuse a config that strands data, then look at every remote."""
        self.refuse_stranding_config()
        with self.context.database.read() as connection:
            known = {row.name: row for row in remotes.all_rows(connection)}
        for remote in self.pool.remotes:
            row = known.get(remote.name)
            if row is not None and row.health != HEALTHY:
                self.pool.set_health(remote.name, row.health, row.last_error)  # as last known, until checked
            self.check(remote)
        self.refresh()

    def refuse_stranding_config(self) -> None:
        """A remote removed from the config may hold the only copy of evicted data."""
        configured = [remote.name for remote in self.pool.remotes]
        with self.context.database.read() as connection:
            chunk_count, file_count = chunks.stranded(connection, configured)
            holding = [name for name in objects.objects_by_remote(connection) if name not in configured]
        if chunk_count:
            names = ", ".join(holding) or "a removed remote"
            raise ZeroError(
                f"the remotes in the config hold no copy of {chunk_count} chunk(s) of {file_count} file(s) that "
                f"are not in the cache; they are on {names}, which the config no longer names. Put "
                f"{names} back into the config, run `zero drain {holding[0] if holding else '<remote>'} "
                f"<cache>` to copy its data to the other remotes, then remove it")

    def still_ours(self, names) -> set[str]:
        """Of ``names``, the remotes whose marker is still in place, read now.

        The uploader asks this after its copies landed and before it counts
        them: a drive that was unmounted under a local remote leaves an empty
        folder that takes writes, and those copies are in the wrong place."""
        ours = set()
        for name in set(names):
            if self.check(self.pool.by_name(name)) == HEALTHY:
                ours.add(name)
        return ours

    def probe(self) -> None:
        """The scheduled look: remotes that are not healthy are checked again each
        time; healthy ones every HEALTHY_PROBE_EVERY times, so an idle remote that
        went away shows in `zero status` too, not only once something is uploaded."""
        self._probes += 1
        for remote in self.pool.remotes:
            if self.pool.health(remote.name) != HEALTHY or self._probes % HEALTHY_PROBE_EVERY == 0:
                self.check(remote)
        self.refresh()

    def refresh(self) -> None:
        """Draining flags and per-remote usage from the state, for placement."""
        with self.context.database.read() as connection:
            rows = remotes.all_rows(connection)
            usage = objects.stored_bytes_by_remote(connection)
        self.pool.set_draining([row.name for row in rows if row.draining])
        self.pool.set_usage(usage)

    def check(self, remote: Remote) -> str:
        """Look at one remote's marker and set its health; returns it."""
        fs_id = self.context.fs_id
        with self.context.database.read() as connection:
            row = remotes.get(connection, remote.name)
        try:
            if row is None or row.remote_id is None:
                return self._first_use(remote)
            marker = identity.read(remote, fs_id)
            if marker is None:
                return self._set(remote, UNAVAILABLE,
                                 f"its marker {layout.marker_key(fs_id)} is gone: the remote was wiped or swapped "
                                 f"for another, or (a folder) its drive is not mounted. Nothing is written there or "
                                 f"counted as stored there until it is back")
            if marker.fs_id != fs_id or marker.remote_id != row.remote_id:
                return self._set(remote, UNAVAILABLE,
                                 f"it holds the marker of another remote (id {marker.remote_id}, this one is "
                                 f"{row.remote_id}): it was swapped. Put the right one back")
            return self._set(remote, HEALTHY, None)
        except ObjectCorrupt as error:
            return self._set(remote, UNAVAILABLE, f"its marker cannot be read: {error}")
        except RemoteUnavailable as error:
            # Transient: it may answer soon. Otherwise (no such folder or bucket, refused
            # credentials) it stays unusable until a person acts.
            return self._set(remote, UNHEALTHY if error.transient else UNAVAILABLE, str(error))

    def _first_use(self, remote: Remote) -> str:
        fs_id = self.context.fs_id
        with self.context.database.read() as connection:
            stored_before = objects.objects_by_remote(connection).get(remote.name, 0)
        if not stored_before:
            remote.prepare()  # the one moment a local folder is created
        marker = identity.read(remote, fs_id)
        if marker is not None:  # written by this filesystem before (a restored or recreated cache)
            with self.context.database.write() as connection:
                remotes.record_identity(connection, remote.name, marker.remote_id)
            return self._set(remote, HEALTHY, None)
        if stored_before and not any(True for _ in remote.list(layout.objects_prefix(fs_id))):
            return self._set(remote, UNAVAILABLE,
                             f"zero stored {stored_before} object(s) there before, and it holds none of them now")
        marker = identity.new_marker(fs_id)
        identity.write(remote, marker)
        with self.context.database.write() as connection:
            remotes.record_identity(connection, remote.name, marker.remote_id)
        log.info("Remote %r is now part of this filesystem (marker %s written)", remote.name,
                 layout.marker_key(fs_id))
        return self._set(remote, HEALTHY, None)

    def _set(self, remote: Remote, health: str, error: str | None) -> str:
        member = self.pool.member(remote.name)
        if member.health == health and member.error == error:
            return health  # nothing new: no write transaction (this runs after every upload group)
        if member.health != health:
            self.pool.set_health(remote.name, health, error)  # logs and records it, once
        else:
            member.error = error
            with self.context.database.write() as connection:
                remotes.set_health(connection, remote.name, health, error)  # same health, newest reason
        return health

    def _record_health(self, name: str, health: str, error: str | None) -> None:
        """The pool saw a change (a call failed after its retries, or a check): say it once."""
        if health == HEALTHY:
            log.info("Remote %r is healthy again", name)
        elif health == UNHEALTHY:
            log.warning("Remote %r is not answering (%s); no new data goes there and it is tried again every "
                        "%.0fs", name, error, PROBE_INTERVAL_S)
        else:
            log.error("Remote %r is unavailable: %s", name, error)
        try:
            with self.context.database.write() as connection:
                remotes.set_health(connection, name, health, error)
        except ZeroError as failure:
            log.warning("Could not record the health of remote %r: %s", name, failure)
