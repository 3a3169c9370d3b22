"""The chunk state machine: every edge of the table, every refused move, and
proof that nothing but chunks.transition() can write a chunk's state."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import sqlalchemy.exc

from zero.errors import StateConflict
from zero.state import chunks
from zero.state.chunkstate import (
    CREATED, EVICTABLE, LOCAL, NEEDS_FETCH, TRANSITIONS, UNUPLOADED, ChunkState, Owner, check_move,
)
from zero.state.db import open_database

ZERO = Path(__file__).resolve().parents[2] / "zero"


@pytest.fixture
def database(tmp_path):
    database = open_database(tmp_path / "state.sqlite3")
    yield database
    database.dispose()


def put_chunk(database, state: ChunkState, ino: int = 5, idx: int = 0) -> None:
    """A row in ``state``, reached through the table's own edges from a new chunk."""
    path = {
        ChunkState.DIRTY: [],
        ChunkState.UPLOADING: [(ChunkState.DIRTY, ChunkState.UPLOADING)],
        ChunkState.CLEAN: [(ChunkState.DIRTY, ChunkState.UPLOADING), (ChunkState.UPLOADING, ChunkState.CLEAN)],
        ChunkState.REMOTE: [(ChunkState.DIRTY, ChunkState.UPLOADING), (ChunkState.UPLOADING, ChunkState.CLEAN),
                            (ChunkState.CLEAN, ChunkState.REMOTE)],
        ChunkState.FETCHING: [(ChunkState.DIRTY, ChunkState.UPLOADING), (ChunkState.UPLOADING, ChunkState.CLEAN),
                              (ChunkState.CLEAN, ChunkState.REMOTE), (ChunkState.REMOTE, ChunkState.FETCHING)],
    }[state]
    with database.write() as connection:
        chunks.take_lease(connection, ino, idx)
        for start, end in path:
            chunks.transition(connection, next(iter(TRANSITIONS[(start, end)])), [start], end, ino=ino, idx=idx)


def state_of(database, ino: int = 5, idx: int = 0) -> str:
    with database.read() as connection:
        return chunks.get(connection, ino, idx).state


@pytest.mark.parametrize("edge", sorted(TRANSITIONS, key=lambda e: (e[0].value, e[1].value)),
                         ids=lambda edge: f"{edge[0].value}->{edge[1].value}")
def test_every_edge_applies_for_each_of_its_owners_and_only_them(database, edge):
    start, end = edge
    for owner in Owner:
        put_chunk(database, start, ino=7, idx=list(Owner).index(owner))
        with database.write() as connection:
            if owner in TRANSITIONS[edge]:
                chunks.transition(connection, owner, [start], end, ino=7, idx=list(Owner).index(owner))
            else:
                with pytest.raises(ValueError, match="may not move"):
                    chunks.transition(connection, owner, [start], end, ino=7, idx=list(Owner).index(owner))
        expected = end if owner in TRANSITIONS[edge] else start
        assert state_of(database, 7, list(Owner).index(owner)) == expected.value


@pytest.mark.parametrize("start, end", [pair for pair in itertools.product(ChunkState, repeat=2)
                                        if pair not in TRANSITIONS],
                         ids=lambda state: state.value)
def test_every_move_outside_the_table_is_refused(start, end):
    for owner in Owner:
        with pytest.raises(ValueError, match="no chunk transition"):
            check_move(owner, [start], end)


def test_every_state_is_reachable_and_can_be_left():
    reachable = set(CREATED.values())
    frontier = list(reachable)
    while frontier:
        state = frontier.pop()
        for start, end in TRANSITIONS:
            if start == state and end not in reachable:
                reachable.add(end)
                frontier.append(end)
    assert reachable == set(ChunkState)
    assert {start for start, _ in TRANSITIONS} == set(ChunkState)


def test_the_named_groups_partition_what_they_claim():
    assert UNUPLOADED | NEEDS_FETCH | EVICTABLE == set(ChunkState)
    assert not UNUPLOADED & NEEDS_FETCH
    assert LOCAL == UNUPLOADED | EVICTABLE


def test_a_compare_and_set_that_finds_another_state_conflicts(database):
    put_chunk(database, ChunkState.CLEAN)
    with database.write() as connection, pytest.raises(StateConflict, match="expected remote, found clean"):
        chunks.transition(connection, Owner.WORKER, [ChunkState.REMOTE], ChunkState.FETCHING, ino=5, idx=0)
    assert state_of(database) == "clean"


def test_the_database_refuses_a_state_write_outside_transition(database):
    put_chunk(database, ChunkState.CLEAN)
    with pytest.raises(sqlalchemy.exc.DatabaseError, match="not authorized"):
        with database.write() as connection:
            connection.exec_driver_sql("UPDATE chunks SET state = 'remote' WHERE ino = 5")
    assert state_of(database) == "clean"
    with database.write() as connection:  # other columns stay writable
        connection.exec_driver_sql("UPDATE chunks SET last_access = 1 WHERE ino = 5")


def test_no_source_outside_transition_writes_the_state_column():
    """The same rule read from the code: SQL or Core that sets ``state`` lives only in transition().
    A condition (``WHERE state = ?``, ``c.state = ?``) reads the column and is not one."""
    pattern = re.compile(r"(?<!WHERE )(?<!\.)\bstate\s*=\s*[?:'\"]|SET\s+state\b|\.values\([^)]*\bstate\s*=")
    offenders = []
    for path in ZERO.rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(ZERO.parent)}:{number}: {line.strip()}")
    allowed = [o for o in offenders if o.startswith("zero/state/chunks.py") and "state = ?" in o]
    assert offenders == allowed and len(allowed) == 1, "\n".join(offenders)
