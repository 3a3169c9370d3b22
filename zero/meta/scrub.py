"""Scrubbing: read stored copies back, verify them, quarantine the bad ones and
repair them.

A copy is bad when the codec does not authenticate it (or it holds another
object's bytes), or when the remote, still ours, no longer has it. A bad copy
is quarantined (zero.state.quarantine): it stops counting at once. A repair
seals the object's plaintext afresh — from a cache file that still hashes to
the object's key, else from another copy that verifies — and stores it on the
bad copy's remote under the same key (same plaintext, so the key's content
does not change), which lifts the quarantine.

Used by the worker (fault-ins report bad copies here; a background thread
scrubs at scrubRate) and by `zero scrub`. ``context`` is anything with
database, pool, codec, fs_id and cache (the worker's context).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from zero.errors import ObjectCorrupt, ObjectMissing, RemoteUnavailable
from zero.remote import layout
from zero.state import namespace, objects, quarantine

log = logging.getLogger(__name__)

REPAIR_RETRY_S = 600.0  # a repair that found no source or no writable remote is tried again after this


@dataclass
class Damage:
    """A chunk that nothing can be read back from, as a person needs to hear it."""

    path: str
    first_byte: int
    last_byte: int
    object_key: str

    def __str__(self) -> str:
        return f"{self.path} (bytes {self.first_byte}-{self.last_byte}, object {self.object_key})"


@dataclass
class ScrubSummary:
    checked: int = 0
    bad: int = 0
    repaired: int = 0
    unrepairable: int = 0
    skipped: int = 0  # copies on remotes that did not answer
    damage: list[Damage] = field(default_factory=list)


def damage_report(connection, chunk_size: int) -> list[Damage]:
    """Chunks not in the cache whose every copy is quarantined, by file."""
    found = []
    for row in quarantine.without_good_copy(connection):
        path = namespace.path_of(connection, row.ino)
        name = path.decode("utf-8", "surrogateescape") if path else f"(inode {row.ino}, unlinked)"
        start = row.idx * chunk_size
        found.append(Damage(name, start, start + chunk_size - 1, row.object_key))
    return found


class Scrubber:
    def __init__(self, context, still_ours=lambda names: set(names), before_read=lambda size: None):
        self.context = context
        # Which remotes still carry their marker (RemoteKeeper.still_ours): a copy
        # missing from an unmounted drive's empty folder is not a bad copy.
        self.still_ours = still_ours
        self.before_read = before_read  # the background scrub's pacing, given the bytes about to be read
        self._retry_after: dict[tuple[str, str], float] = {}

    def _remote_key(self, key: str) -> str:
        return layout.object_key(self.context.fs_id, key)

    def _verified(self, key: str):
        return lambda blob: self.context.codec.open(blob, expected_key=key)

    # -- checking ------------------------------------------------------------------------------

    def judge(self, key: str, verdicts: dict[str, Exception | None]) -> None:
        """What a read learnt of each copy (remote -> None if it verified, else
        the error): quarantine the bad, lift the quarantine of the good."""
        self.quarantine(key, {name: error for name, error in verdicts.items() if error is not None})
        good = [name for name, error in verdicts.items() if error is None]
        if good:
            with self.context.database.read() as connection:
                lifted = [name for name in good if quarantine.is_quarantined(connection, key, name)]
            if lifted:
                with self.context.database.write() as connection:
                    for name in lifted:
                        quarantine.lift(connection, key, name)
                log.info("The copy of %s on remote(s) %s verifies again: no longer quarantined",
                         self._remote_key(key), ", ".join(lifted))

    def quarantine(self, key: str, bad: dict[str, Exception]) -> set[str]:
        """Quarantine the bad copies; a missing one counts only if its remote
        still carries our marker. Returns the remotes whose copy is bad."""
        missing = [name for name, error in bad.items() if isinstance(error, ObjectMissing)]
        gone = set(missing) - self.still_ours(missing) if missing else set()
        bad = {name: error for name, error in bad.items() if name not in gone}
        if bad:
            with self.context.database.write() as connection:
                new = [name for name in bad if quarantine.record(connection, key, name, str(bad[name]))]
            for name in new:
                log.warning("The copy of %s on remote %s is bad (%s): quarantined. It no longer counts as a copy; "
                            "zero-worker stores a good one there from the cache or another replica when it has one",
                            self._remote_key(key), name, bad[name])
        return set(bad)

    def check(self, key: str, remote: str, stored_bytes: int = 0) -> bool | None:
        """Read one copy back and verify it: True if good, False if bad (now
        quarantined), None if the remote did not answer (nothing learnt)."""
        self.before_read(stored_bytes)
        try:
            self.context.pool.get(self._remote_key(key), [remote], decode=self._verified(key))
        except RemoteUnavailable:
            return None
        except (ObjectCorrupt, ObjectMissing) as error:
            return False if self.quarantine(key, {remote: error}) else None
        self.judge(key, {remote: None})  # a quarantined copy put back by hand is lifted
        return True

    def scrub_all(self, progress=lambda copies, size: None) -> ScrubSummary:
        """One pass over every stored copy, then repair what can be repaired."""
        summary = ScrubSummary()
        cursor = None
        while True:
            with self.context.database.read() as connection:
                batch = quarantine.copies_after(connection, cursor, 256)
            if not batch:
                break
            for row in batch:
                verdict = self.check(row.key, row.remote, row.stored_bytes)
                summary.checked += verdict is not None
                summary.bad += verdict is False
                summary.skipped += verdict is None
                progress(1, row.stored_bytes)
            cursor = (batch[-1].key, batch[-1].remote)
        summary.repaired, summary.unrepairable = self.repair_all(retry_all=True)
        with self.context.database.read() as connection:
            summary.damage = damage_report(connection, self.context.chunk_size)
        return summary

    # -- repairing -----------------------------------------------------------------------------

    def repair_all(self, retry_all: bool = False) -> tuple[int, int]:
        """Try to repair every quarantined copy (those that failed lately only
        with ``retry_all``); returns (repaired, not repaired)."""
        now = time.monotonic()
        with self.context.database.read() as connection:
            bad = [(row.key, row.remote) for row in quarantine.rows(connection)]
        repaired = failed = 0
        for copy in bad:
            if not retry_all and self._retry_after.get(copy, 0.0) > now:
                continue
            if self.repair(*copy):
                repaired += 1
                self._retry_after.pop(copy, None)
            else:
                failed += 1
                self._retry_after[copy] = now + REPAIR_RETRY_S
        return repaired, failed

    def repair_due(self) -> bool:
        """Whether some quarantined copy waits for a repair attempt now."""
        now = time.monotonic()
        with self.context.database.read() as connection:
            bad = [(row.key, row.remote) for row in quarantine.rows(connection)]
        return any(self._retry_after.get(copy, 0.0) <= now for copy in bad)

    def repair(self, key: str, remote: str) -> bool:
        """Store a good copy of ``key`` on ``remote``; False if no good source or
        the remote cannot take it now."""
        plaintext, source = self._from_cache(key), "the cache"
        if plaintext is None:
            plaintext, source = self._from_other_copy(key, remote)
        if plaintext is None:
            return False
        blob = self.context.codec.seal(plaintext, object_key=key)
        try:
            if remote not in self.still_ours([remote]):
                return False
            self.context.pool.put_on(remote, self._remote_key(key), blob)
        except RemoteUnavailable as error:
            log.debug("Repair of %s on %s postponed: %s", key, remote, error)
            return False
        if remote not in self.still_ours([remote]):
            return False  # landed in a folder that is not ours any more: it does not count
        with self.context.database.write() as connection:
            if objects.get(connection, key) is None:
                return False  # collected meanwhile; the copy is an orphan for the sweep
            objects.record_copy(connection, key, remote, len(blob))
        log.info("Repaired the copy of %s on remote %s from %s", self._remote_key(key), remote, source)
        return True

    def _from_cache(self, key: str) -> bytes | None:
        with self.context.database.read() as connection:
            local = quarantine.local_chunks_of(connection, key)
        for row in local:
            try:
                with open(self.context.cache.chunk_path(row.ino, row.idx), "rb") as chunk_file:
                    data = chunk_file.read()
            except FileNotFoundError:
                continue  # evicted or deleted since
            if self.context.codec.object_key(data) == key:  # not rewritten since its upload
                return data
        return None

    def _from_other_copy(self, key: str, remote: str) -> tuple[bytes | None, str]:
        with self.context.database.read() as connection:
            others = [name for name in objects.good_holders(connection, key) if name != remote]
        if not others:
            return None, ""
        verdicts: dict[str, Exception | None] = {}
        try:
            plaintext = self.context.pool.get(self._remote_key(key), others, decode=self._verified(key),
                                              on_copy=verdicts.__setitem__)
        except (RemoteUnavailable, ObjectCorrupt, ObjectMissing):
            plaintext = None
        self.judge(key, verdicts)
        served = [name for name, error in verdicts.items() if error is None]
        return plaintext, f"remote {served[0]}" if served else ""
