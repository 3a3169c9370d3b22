"""The chunk state machine as code: the states, who may move a chunk from
one to another, and the named groups of states the rest of zero asks about.

Nothing outside ``zero.state.chunks.transition()`` writes a chunk's state;
the database refuses it (see ``StateWriteGuard``), and
tests/unit/test_chunkstate.py walks this table.
"""

from __future__ import annotations

import enum
import threading


class ChunkState(str, enum.Enum):
    """Where a chunk's bytes are."""

    DIRTY = "dirty"          # only in the cache, changed since its last upload
    UPLOADING = "uploading"  # being uploaded; a write sends it back to dirty
    CLEAN = "clean"          # in the cache and stored remotely with the same content
    REMOTE = "remote"        # only stored remotely (evicted)
    FETCHING = "fetching"    # being faulted back in


class Owner(str, enum.Enum):
    """The process that makes a move."""

    FUSE = "fuse"
    WORKER = "worker"
    FSCK = "fsck"  # `zero fsck --repair`, run while neither process holds the cache


D, U, C, R, F = ChunkState.DIRTY, ChunkState.UPLOADING, ChunkState.CLEAN, ChunkState.REMOTE, ChunkState.FETCHING

# (from, to) -> the processes that may make the move; an edge may have several owners.
TRANSITIONS: dict[tuple[ChunkState, ChunkState], frozenset[Owner]] = {
    (D, D): frozenset({Owner.FUSE}),                # take the write lease again (bumps the version)
    # fuse: a write to an uploaded chunk; fsck: its object is on no remote, upload the cache file again
    (C, D): frozenset({Owner.FUSE, Owner.FSCK}),
    # fuse: a write during an upload; worker: upload failed; fsck: an upload a stop interrupted
    (U, D): frozenset({Owner.FUSE, Owner.WORKER, Owner.FSCK}),
    (D, U): frozenset({Owner.WORKER}),              # upload starts
    (U, C): frozenset({Owner.WORKER}),              # upload done, version unchanged
    (C, R): frozenset({Owner.WORKER, Owner.FSCK}),  # eviction; fsck: the file is gone, a remote holds the object
    (R, F): frozenset({Owner.WORKER}),              # fault-in starts
    (F, C): frozenset({Owner.WORKER}),              # fault-in done
    (F, R): frozenset({Owner.WORKER, Owner.FSCK}),  # fault-in failed or was interrupted
}

# The state a chunk row is created in, by its owner: fuse's first write to a hole.
CREATED = {Owner.FUSE: D}
# The state `zero restore` creates every chunk row in: its content is only in a remote.
RESTORED = R

# Named groups: callers ask these questions instead of spelling out states.
UNUPLOADED = frozenset({D, U})      # the content exists only in the cache
LOCAL = frozenset({D, U, C})        # the cache file holds the content
NEEDS_FETCH = frozenset({R, F})     # the content must come back from a remote
EVICTABLE = frozenset({C})          # may be dropped from the cache (if unleased, unpinned)


def check_move(owner: Owner, from_states, to_state: ChunkState) -> None:
    """Raise ValueError unless ``owner`` may move a chunk from each of ``from_states`` to ``to_state``."""
    for from_state in from_states:
        owners = TRANSITIONS.get((from_state, to_state))
        if owners is None:
            raise ValueError(f"no chunk transition {from_state.value} -> {to_state.value}")
        if owner not in owners:
            raise ValueError(f"{owner.value} may not move a chunk {from_state.value} -> {to_state.value}")


class StateWriteGuard:
    """A SQLite authorizer that refuses any write of ``chunks.state`` made
    outside ``transition()``, so raw SQL cannot bypass the table above.

    SQLite asks the authorizer when it prepares a statement; the thread
    preparing it inside transition() has ``allowed`` set.
    """

    _local = threading.local()

    @classmethod
    def allowing(cls):
        return _Allowing(cls._local)

    @classmethod
    def authorize(cls, action, table, column, _database, _trigger) -> int:
        import sqlite3
        if action == sqlite3.SQLITE_UPDATE and table == "chunks" and column == "state" \
                and not getattr(cls._local, "allowed", False):
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK


class _Allowing:
    def __init__(self, local):
        self._local = local

    def __enter__(self):
        self._local.allowed = True

    def __exit__(self, *_):
        self._local.allowed = False
