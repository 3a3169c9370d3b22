"""One writer per filesystem: the lease in the remotes, who may take it, and the fence.

Two machines writing one filesystem would overwrite each other's metadata
segments (both number them from the same point) and each one's collector
would delete objects the other still needs. So the worker that writes — the
one process that talks to the remotes — holds a lease, ``<fs_id>/lock``
(zero.remote.writerlease): its writer id (made when the cache was formatted
or restored), host, pid, cache, start, heartbeat, and the last metadata
segment it stored. It takes the lease at start, refreshes it every quarter
of ``writerTimeout``, and marks it stopped on a clean stop.

Taking it (``judge``): a lease that names this cache's writer id is ours; a
cleanly stopped one is free unless its holder stored metadata this cache
lacks (writing on would fork the filesystem); a live one (heartbeat younger
than ``writerTimeout``) is refused even with --force; a dead one (stale
heartbeat, or a pid that no longer runs on this very host and boot) only
with --force.

The fence: the holder writes to the remotes (uploads, metadata, collection)
only while its last confirmation is younger than half of ``writerTimeout``,
measured on a clock that keeps counting through suspend; anyone else waits
the whole timeout before calling it dead. A writer that finds another id in
the lease stops writing for good, logs it once, and says so in the state
(``zero status``, and zero-fuse refuses a read-write mount)."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

from zero.errors import NotTheWriter, RemoteUnavailable, ZeroError
from zero.remote import layout, writerlease
from zero.remote.writerlease import Lease
from zero.state import db as state_db

log = logging.getLogger(__name__)

WRITER_ID_META = "writer_id"
MODE_META = "writer_mode"        # READ_ONLY for a `zero restore --at` point; absent: this cache may write
VERDICT_META = "writer_verdict"  # the worker's last word on its role (JSON), for zero-fuse and zero status
SEQUENCE_META = "backup_sequence"  # zero.meta.backup's: the last segment this cache stored
ATTEMPT_META = "backup_attempt"    # zero.meta.backup's: the last number it sent, stored or not
RESTORED_WITHOUT_META = "restored_without"  # remotes that did not answer the restore (comma-separated)

WRITER = "writer"        # holds the lease: uploads, collects, backs up the metadata
PENDING = "pending"      # no remote answered yet: writes stay in the cache until one does
REFUSED = "refused"      # another machine holds the lease
FENCED = "fenced"        # held it, and another machine has taken the filesystem over since
READ_ONLY = "read-only"  # a restored older point: never writes to the remotes
NOT_WRITING = (REFUSED, FENCED, READ_ONLY)


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def boot_clock() -> float:
    """Seconds that keep counting while the machine sleeps: a laptop that wakes
    after an hour must not trust a confirmation from before its sleep."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


# -- the cache's side, in its state ------------------------------------------------------------

def writer_id(database) -> str:
    """This cache's writer id; made now for a cache formatted before leases existed."""
    with database.read() as connection:
        found = state_db.get_meta(connection, WRITER_ID_META)
    if found:
        return found
    with database.write() as connection:
        found = state_db.get_meta(connection, WRITER_ID_META) or uuid.uuid4().hex
        state_db.set_meta(connection, WRITER_ID_META, found)
    return found


def is_read_only(database) -> bool:
    with database.read() as connection:
        return state_db.get_meta(connection, MODE_META) == READ_ONLY


def record_verdict(database, role: str, message: str) -> None:
    verdict = {"role": role, "message": message, "pid": os.getpid(), "at": time.time()}
    with database.write() as connection:
        state_db.set_meta(connection, VERDICT_META, json.dumps(verdict))


def read_verdict(database) -> dict | None:
    with database.read() as connection:
        found = state_db.get_meta(connection, VERDICT_META)
    return json.loads(found) if found else None


# -- the lease in the remotes -----------------------------------------------------------------------

def describe(lease: Lease, now: float) -> str:
    since = datetime.fromtimestamp(lease.started).isoformat(sep=" ", timespec="seconds")
    return (f"{lease.host} (cache {lease.cache}, pid {lease.pid}), writing since {since}, "
            f"last heartbeat {max(0.0, now - lease.heartbeat):.0f}s ago")


def is_alive(lease: Lease, now: float, timeout_s: float) -> bool:
    if lease.stopped:
        return False
    if lease.host == socket.gethostname() and lease.boot_id == boot_id():
        try:
            os.kill(lease.pid, 0)
        except ProcessLookupError:
            return False  # on this very machine and boot: the process is gone, whatever its heartbeat says
        except PermissionError:
            pass
    return now - lease.heartbeat < timeout_s


def forked(whose: str, theirs: int, ours: int) -> str:
    return (f"this cache is older than the filesystem in the remotes: {whose} stored its metadata up to segment "
            f"{theirs}, this cache only up to {ours}, so writing from here would fork the filesystem. Restore it "
            f"into a new cache folder (zero restore <new cache>) and use that")


def judge(lease: Lease | None, writer: str, sequence: int, now: float, timeout_s: float,
          force: bool) -> str | None:
    """None when the writer ``writer``, whose state has stored metadata up to
    ``sequence``, may take the lease; otherwise the sentence saying why not and what to do."""
    if lease is None or lease.writer_id == writer:
        return None
    holder = describe(lease, now)
    if writer and lease.taken_from == writer:
        # Whatever it did since (nothing yet, or a clean stop): it was told this cache stops writing.
        return (f"the filesystem was taken over from this cache by {holder} (zero restore --force), so this cache "
                f"no longer writes it, even with --force. Copy out what it holds that is not uploaded, then "
                f"restore (zero restore) into a new cache to go on from the new writer's state")
    forked_here = forked(f"{lease.host} (cache {lease.cache})", lease.sequence, sequence)
    if lease.stopped:
        return forked_here if lease.sequence > sequence else None
    if is_alive(lease, now, timeout_s):
        wait = timeout_s - (now - lease.heartbeat)
        return (f"the filesystem is being written by {holder}. Stop it there first (zero umount, or stop its "
                f"zero-worker). If that machine is dead, --force can take over once its heartbeat is older than "
                f"writerTimeout ({timeout_s:.0f}s, in {wait:.0f}s); a live writer is never taken over")
    if not force:
        return (f"the filesystem was being written by {holder}, which did not stop cleanly. Wait for it to "
                f"stop, or, if that machine is dead or its cache is lost, take the filesystem over with --force "
                f"(what it had not uploaded is then lost to this copy)")
    return forked_here if lease.sequence > sequence else None


def newest_segment(remotes, fs_id: str) -> tuple[int, list[str]]:
    """The highest metadata segment number in the remotes that answer (0: none), and
    the names of those that did not."""
    newest, unlisted = 0, []
    for remote in remotes:
        try:
            for key, _size, _mtime in remote.list(layout.meta_prefix(fs_id)):
                sequence = layout.parse_snapshot_key(fs_id, key) or layout.parse_journal_key(fs_id, key) or 0
                newest = max(newest, sequence)
        except RemoteUnavailable as error:
            log.info("Could not list the metadata on %s: %s", remote.name, error)
            unlisted.append(remote.name)
    return newest, unlisted


def read_holder(remotes, fs_id: str) -> Lease | None:
    """The lease with the newest heartbeat over ``remotes``; RemoteUnavailable if none answered."""
    found, problems, answered = [], [], False
    for remote in remotes:
        try:
            lease = writerlease.read(remote, fs_id)
            answered = True
        except RemoteUnavailable as error:
            problems.append(f"{remote.name}: {error}")
            continue
        if lease is not None:
            found.append(lease)
    if not answered:
        raise RemoteUnavailable(f"no remote answered for the writer lease {layout.lock_key(fs_id)} "
                                f"({'; '.join(problems) or 'none configured and healthy'})")
    return max(found, key=lambda lease: lease.heartbeat, default=None)


def put_lease(remotes, fs_id: str, lease: Lease) -> list[str]:
    stored = []
    for remote in remotes:
        try:
            writerlease.write(remote, fs_id, lease)
            stored.append(remote.name)
        except RemoteUnavailable as error:
            log.info("Could not write the writer lease on %s: %s", remote.name, error)
    return stored


def new_lease(writer: str, cache, sequence: int, now: float, stopped: bool = False, taken_from: str = "") -> Lease:
    return Lease(writer_id=writer, host=socket.gethostname(), boot_id=boot_id(), pid=os.getpid(),
                 cache=str(cache), started=now, heartbeat=now, sequence=sequence, stopped=stopped,
                 taken_from=taken_from)


def restored_without(database) -> list[str]:
    """The remotes that did not answer the restore that made this cache, until a worker has checked them."""
    with database.read() as connection:
        return [name for name in (state_db.get_meta(connection, RESTORED_WITHOUT_META) or "").split(",") if name]


def check_one_shot(database, remotes, fs_id: str) -> None:
    """For a command that deletes from the remotes outside the worker (zero gc):
    only the writer's cache may, and only while no one else holds the lease."""
    if is_read_only(database):
        raise NotTheWriter("this cache is a read-only restore point (zero restore --at); it deletes nothing "
                           "from the remotes")
    configured = {remote.name for remote in remotes}
    unchecked = [name for name in restored_without(database) if name in configured]
    if unchecked:
        raise NotTheWriter(f"this cache was restored while {', '.join(unchecked)} did not answer; until zero-worker "
                           f"has checked what it holds, objects this cache does not know may be needed there. "
                           f"Start zero-worker once it answers, or take it out of the config if it is gone for good")
    holder = read_holder(remotes, fs_id)
    if holder is not None and holder.writer_id != writer_id(database):
        raise NotTheWriter(f"this cache is not the filesystem's writer: {describe(holder, time.time())}. "
                           f"Deleting from here could remove objects the writer needs; run it on that machine")


# -- the worker's lease -----------------------------------------------------------------------------

class Writer:
    """The worker's lease: ``start`` takes it (or refuses), ``heartbeat`` keeps
    it (or finds it lost), ``may_write`` is the fence, ``release`` marks it stopped."""

    def __init__(self, database, fs_id: str, cache, timeout_s: float, remotes, clock=time.time,
                 ticker=boot_clock, configured=None):
        self.database = database
        self.fs_id = fs_id
        self.cache = str(cache)
        self.timeout_s = timeout_s
        self.remotes = remotes  # () -> the remotes usable now (ours and answering)
        self.configured = configured or (lambda: [remote.name for remote in remotes()])  # () -> names in the config
        self.clock = clock
        self.ticker = ticker
        self.role = PENDING
        self.message = ""
        self.force = False
        self.on_writer = lambda: None   # once it holds the lease (the worker publishes the keys then)
        self.on_change = lambda: None   # after each change of role (the worker wakes zero-fuse)
        self._lease: Lease | None = None
        self._confirmed_at: float | None = None
        self._starting = False
        self._announced = False  # the lease has named a segment this writer stored
        self._lock = threading.RLock()

    @property
    def heartbeat_interval_s(self) -> float:
        return self.timeout_s / 4

    def start(self, force: bool = False) -> str:
        """Take the lease; NotTheWriter when another machine holds it. With no
        remote answering, the role is PENDING and each heartbeat tries again."""
        self.force, self._starting = force, True
        with self._lock:
            if is_read_only(self.database):
                self._set(READ_ONLY, "this cache is a read-only restore point (zero restore --at): nothing is "
                                     "uploaded, collected or backed up from it")
            else:
                self._acquire()
        self._starting = False
        if self.role == REFUSED:
            raise NotTheWriter(self.message)
        return self.role

    def heartbeat(self) -> None:
        with self._lock:
            if self.role == PENDING:
                self._acquire()
            elif self.role == WRITER:
                self._confirm()

    def may_write(self) -> bool:
        """The fence, cheap on the hot path: confirmed less than half the timeout ago,
        else confirmed now."""
        with self._lock:
            if self.role != WRITER:
                return False
            if self._confirmed_at is not None and self.ticker() - self._confirmed_at < self.timeout_s / 2:
                return True
            return self._confirm()

    def segment_stored(self, sequence: int) -> None:
        """Before this writer's first metadata segment is sent, the lease names it, rather
        than at the next heartbeat: a writer killed before that heartbeat otherwise left a
        lease naming the segment it started from, and another cache as far along would
        not see that taking over forks the filesystem (decision 94)."""
        with self._lock:
            if self._announced or self.role != WRITER or self._lease is None:
                return
            lease = self._lease.beat(self.clock(), sequence)
            if put_lease(self.remotes(), self.fs_id, lease):
                self._lease, self._announced = lease, True

    def confirm_now(self) -> bool:
        """Before deleting from the remotes: read the lease now, whatever the last confirmation."""
        with self._lock:
            return self.role == WRITER and self._confirm()

    def release(self) -> None:
        """A clean stop: the lease stays, marked stopped, with the last segment stored."""
        with self._lock:
            if self.role == WRITER and self._confirm():
                put_lease(self.remotes(), self.fs_id,
                          self._lease.beat(self.clock(), self._sequence(), stopped=True))
                log.info("Released the writer lease %s", layout.lock_key(self.fs_id))

    # -- inside ----------------------------------------------------------------------------

    def _sequence(self) -> int:
        with self.database.read() as connection:
            return int(state_db.get_meta(connection, SEQUENCE_META) or 0)

    def _sent_up_to(self) -> int:
        """The highest segment number this cache may have stored (decision 89: an attempt counts)."""
        with self.database.read() as connection:
            return max(int(state_db.get_meta(connection, SEQUENCE_META) or 0),
                       int(state_db.get_meta(connection, ATTEMPT_META) or 0))

    def _restored_without(self, answering: list[str]) -> list[str]:
        """Remotes the restore that made this cache could not read, still configured and not
        answering now: they may hold newer metadata than what was restored (another machine
        wrote there alone), so numbering on from here could reuse its numbers."""
        configured = set(self.configured())
        return [name for name in restored_without(self.database) if name in configured and name not in answering]

    def _wait_for_unchecked(self, names: list[str]) -> None:
        self._set(PENDING, f"this cache was restored while {', '.join(names)} did not answer, and what it holds "
                           f"may be newer than what was restored: nothing is written to the remotes until it "
                           f"answers and its metadata has been listed, or until it leaves the config if it is "
                           f"gone for good")

    def _acquire(self) -> None:
        began = self.ticker()
        remotes = self.remotes()
        missing = self._restored_without([remote.name for remote in remotes])
        if missing:
            self._wait_for_unchecked(missing)
            return
        try:
            holder = read_holder(remotes, self.fs_id)
        except RemoteUnavailable as error:
            self._set(PENDING, f"the writer lease could not be checked ({error}); nothing is uploaded until a "
                               f"remote answers")
            return
        mine, sequence, now = writer_id(self.database), self._sequence(), self.clock()
        why_not = judge(holder, mine, sequence, now, self.timeout_s, self.force)
        if why_not is None:
            # The lease says what its holder had stored when it last beat; the remotes say what is
            # there: a writer killed before its first heartbeat left newer segments than its lease names.
            sent, (newest, unlisted) = self._sent_up_to(), newest_segment(remotes, self.fs_id)
            unchecked = [name for name in self._restored_without([]) if name in unlisted]
            if unchecked:
                self._wait_for_unchecked(unchecked)
                return
            if newest > sent:
                why_not = forked("another cache", newest, sent)
        if why_not is not None:
            self._set(REFUSED, why_not)
            return
        inherited = holder.taken_from if holder is not None and holder.writer_id == mine else ""
        lease = new_lease(mine, self.cache, sequence, now, taken_from=inherited)
        if not put_lease(remotes, self.fs_id, lease):
            self._set(PENDING, "no remote took the writer lease; nothing is uploaded until one does")
            return
        self._lease, self._confirmed_at = lease, began
        with self.database.write() as connection:  # whatever the restore could not read has been checked now
            state_db.set_meta(connection, RESTORED_WITHOUT_META, "")
        if holder is not None and holder.writer_id != mine and not holder.stopped:
            log.warning("Took the filesystem over from %s (--force)", describe(holder, now))
        self._set(WRITER, f"this cache writes the filesystem (lease {layout.lock_key(self.fs_id)})")
        self.on_writer()

    def _confirm(self) -> bool:
        began = self.ticker()
        remotes = self.remotes()
        try:
            holder = read_holder(remotes, self.fs_id)
        except RemoteUnavailable:
            return False  # unconfirmed: may_write turns False once the last confirmation is too old
        if holder is not None and holder.writer_id != self._lease.writer_id:
            self._set(FENCED, f"another machine has taken the filesystem over: {describe(holder, self.clock())}. "
                              f"This cache no longer uploads, collects or backs up anything; what it holds that "
                              f"is not uploaded stays here only. Copy out what you need, then restore "
                              f"(zero restore) into a new cache to continue from the new writer's state")
            return False
        lease = self._lease.beat(self.clock(), self._sequence())
        if not put_lease(remotes, self.fs_id, lease):
            return False
        self._lease, self._confirmed_at = lease, began
        return True

    def _set(self, role: str, message: str) -> None:
        if role == self.role and message == self.message:
            return
        changed, self.role, self.message = role != self.role, role, message
        if changed and role == FENCED:
            log.error("Fenced: %s", message)
        elif changed and role == REFUSED and not self._starting:
            log.error("Not the writer: %s", message)  # at start the refusal is the worker's exit message
        elif changed and role != REFUSED:
            log.info("Writer lease: %s", message)
        try:
            record_verdict(self.database, role, message)
        except ZeroError as error:
            log.warning("Could not record the writer's role in the state: %s", error)
        self.on_change()
