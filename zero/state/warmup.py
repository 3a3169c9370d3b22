"""`zero warmup` (and `zero pin --wait`): which chunks of some trees are not in
the cache, the fetches asked for them, and how far they got."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Connection

from zero.state import chunks, namespace, objects, remotes, requests


@dataclass
class Asked:
    wanted: dict[tuple[int, int], str] = field(default_factory=dict)  # (ino, idx) -> object key, not local
    wanted_bytes: int = 0   # their plain size
    local_bytes: int = 0    # what the trees already hold in the cache
    files: int = 0


@dataclass
class Progress:
    pending: list[tuple[int, int]]      # not local yet, and a remote that holds it answers
    failed: dict[tuple[int, int], str]  # the worker gave up: the object is missing or corrupt
    blocked: dict[tuple[int, int], list[str]]  # every remote holding it is down: their names

    @property
    def settled(self) -> bool:
        return not self.pending


def ask(connection: Connection, roots, priority: int | None) -> Asked:
    """The chunks under ``roots`` that are not in the cache; with a ``priority``,
    a fetch is asked for each (the caller wakes the worker)."""
    asked = Asked()
    for ino in {child for root in roots for child in namespace.descendants(connection, root)}:
        rows = chunks.all_rows_of(connection, ino)
        asked.files += bool(rows)
        for row in rows:
            if chunks.needs_fetch(row):
                asked.wanted[(row.ino, row.idx)] = row.object_key
                found = objects.get(connection, row.object_key)
                asked.wanted_bytes += found.plain_bytes if found is not None else 0
                if priority is not None:
                    requests.request_fetch(connection, row.ino, row.idx, priority)
            else:
                asked.local_bytes += row.stored_bytes
    return asked


def progress(connection: Connection, wanted: dict[tuple[int, int], str]) -> Progress:
    """Where the asked-for chunks are: local (or deleted meanwhile) ones are left out."""
    healthy = {row.name for row in remotes.all_rows(connection) if row.health == remotes.HEALTHY}
    result = Progress([], {}, {})
    for (ino, idx), key in wanted.items():
        row = chunks.get(connection, ino, idx)
        if row is None or not chunks.needs_fetch(row):
            continue
        error = requests.fetch_error(connection, ino, idx)
        holders = objects.remotes_holding(connection, row.object_key or key)
        if error is not None:
            result.failed[(ino, idx)] = error
        elif not healthy.intersection(holders):
            result.blocked[(ino, idx)] = holders
        else:
            result.pending.append((ino, idx))
    return result
