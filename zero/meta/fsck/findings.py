"""What a check finds, what it can repair, and what every check needs to
name a file: its paths, read from the directory entries without trusting
them to form a tree."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Connection

from zero.cachedir import CacheDir
from zero.meta.fsck.remotes import RemoteView
from zero.state import fsck as state_fsck
from zero.state.namespace import ROOT_INO

# A repair: runs inside the check's write transaction; returns cache files to unlink after the commit.
Fix = Callable[[Connection], "list[str] | None"]


@dataclass
class Lost:
    """Bytes [start, end) of inode ``ino`` that exist nowhere: not in the cache, on no remote."""

    ino: int
    start: int
    end: int
    path: str = ""


@dataclass
class Finding:
    problem: str                 # what is wrong, naming the file
    repair: str = ""             # what the fix does, in words ("" when there is none)
    fix: Fix | None = None
    lost: Lost | None = None     # set: the fix makes these bytes a hole, so it runs only with accept_loss
    repaired: bool = False


@dataclass
class CheckResult:
    check: Callable
    findings: list[Finding] = field(default_factory=list)
    skipped: str = ""                  # why (part of) the check could not run
    skipped_on_request: bool = False   # --no-remote: not an error

    @property
    def title(self) -> str:
        return self.check.__name__.replace("_", " ")


class Names:
    """Paths of inodes from the directory entries, safe on a damaged tree
    (loops and missing parents end a path instead of looping)."""

    def __init__(self, connection: Connection):
        self._first: dict[int, tuple[int, bytes]] = {}
        self._all: dict[int, list[tuple[int, bytes]]] = {}
        for entry in state_fsck.entries(connection):
            self._first.setdefault(entry.ino, (entry.parent, entry.name))
            self._all.setdefault(entry.ino, []).append((entry.parent, entry.name))

    def path(self, ino: int) -> str:
        """One path of ``ino`` for a message; a broken chain says where it breaks."""
        if ino == ROOT_INO:
            return "/"
        parts: list[bytes] = []
        seen = {ino}
        current = ino
        while current != ROOT_INO:
            link = self._first.get(current)
            if link is None:
                rest = show(b"/" + b"/".join(reversed(parts))) if parts else ""
                return f"<inode {current}, which has no name>{rest}"
            parent, name = link
            parts.append(name)
            if parent in seen:
                return f"<a loop at inode {parent}>" + show(b"/" + b"/".join(reversed(parts)))
            seen.add(parent)
            current = parent
        return show(b"/" + b"/".join(reversed(parts)))

    def paths(self, ino: int) -> list[str]:
        """Every name of ``ino`` (its hard links)."""
        links = self._all.get(ino, [])
        if not links:
            return [self.path(ino)]
        return [self.join(parent, name) for parent, name in links]

    def join(self, parent: int, name: bytes) -> str:
        prefix = self.path(parent)
        return (prefix.rstrip("/") if prefix != "/" else "") + "/" + show(name)


def show(name: bytes) -> str:
    """A name or path for one line of a report: undecodable bytes and control characters escaped."""
    text = name.decode("utf-8", errors="backslashreplace")
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode() for char in text)


@dataclass
class Context:
    """What the checks share: the cache, the chunk size, the remotes' listings,
    a progress bar factory, and the names of the namespace as the current check found it."""

    cache: CacheDir
    chunk_size: int
    remotes: RemoteView
    progress: Callable | None = None
    _names: Names | None = None
    _connection: Connection | None = None

    def begin_check(self, connection: Connection) -> None:
        self._connection, self._names = connection, None

    @property
    def names(self) -> Names:
        if self._names is None:
            self._names = Names(self._connection)
        return self._names

    def steps(self, iterable, total: int, what: str):
        """``iterable`` with a progress bar over it, when one was asked for."""
        return iterable if self.progress is None else self.progress(iterable, total=total, desc=what)

    def lost_range(self, ino: int, idx: int, size: int) -> Lost:
        start = idx * self.chunk_size
        return Lost(ino, start, max(start, min(start + self.chunk_size, size)), " or ".join(self.names.paths(ino)))
