"""The namespace's invariants: the root is a directory, every entry names an
inode and sits in a directory, every inode is reachable from the root (no
loops), no inode is left without a name, and link counts match the entries.

In that order: a repair of one (an entry removed) shows up in the next (its
inode is now an orphan, reconnected under /lost+found as e2fsck does).
"""

from __future__ import annotations

import stat
import time
from collections import defaultdict

from sqlalchemy import Connection

from zero.meta.fsck.findings import Context, Finding
from zero.state import fsck as state_fsck
from zero.state import chunks, namespace
from zero.state.namespace import ROOT_INO

LOST_AND_FOUND = b"lost+found"


def _inodes(context: Context, connection: Connection) -> dict[int, state_fsck.InodeRow]:
    rows = state_fsck.inode_rows(connection)
    return {row.ino: row for row in context.steps(rows, state_fsck.inode_count(connection), "inodes")}


def _is_dir(row) -> bool:
    return row is not None and stat.S_ISDIR(row.mode)


def root_is_a_directory(context: Context, connection: Connection):
    root = namespace.get_inode(connection, ROOT_INO)
    if not _is_dir(root):
        yield Finding("the root (inode 1) is missing or not a directory: the filesystem cannot be mounted; "
                      "restore the state from the remotes (zero restore into a new cache folder)")


def entries_name_existing_inodes(context: Context, connection: Connection):
    inodes = _inodes(context, connection)
    for entry in state_fsck.entries(connection):
        if entry.ino not in inodes:
            yield Finding(f"{context.names.join(entry.parent, entry.name)} names inode {entry.ino}, which does not "
                          "exist", "remove the entry (it leads nowhere)", _remove_entry(entry))


def entries_are_in_directories(context: Context, connection: Connection):
    inodes = _inodes(context, connection)
    for entry in state_fsck.entries(connection):
        parent = inodes.get(entry.parent)
        if not _is_dir(parent):
            what = "does not exist" if parent is None else "is not a directory"
            yield Finding(f"an entry {context.names.join(entry.parent, entry.name)} for inode {entry.ino} is in "
                          f"inode {entry.parent}, which {what}",
                          "remove the entry (an inode left without a name goes to /lost+found)", _remove_entry(entry))


def tree_is_connected(context: Context, connection: Connection):
    """Walk from the root: a directory met twice has a second name (a loop, or a
    hard link to a directory); directories never met hang in a loop of their own."""
    inodes = _inodes(context, connection)
    children: dict[int, list] = defaultdict(list)
    names_of: dict[int, list] = defaultdict(list)
    for entry in state_fsck.entries(connection):
        children[entry.parent].append(entry)
        names_of[entry.ino].append(entry)
    reached, frontier = {ROOT_INO}, [ROOT_INO]
    steps = iter(context.steps(range(len(inodes)), len(inodes), "tree"))
    while frontier:
        next_frontier = []
        for parent in frontier:
            for entry in sorted(children.get(parent, ()), key=lambda e: e.name):
                if entry.ino in reached and (_is_dir(inodes.get(entry.ino)) or entry.ino == ROOT_INO):
                    yield Finding(f"the directory {context.names.path(entry.ino)} has a second name "
                                  f"{context.names.join(entry.parent, entry.name)} (a directory has one name; "
                                  "this makes a loop or a hard link to a directory)",
                                  "remove the second name", _remove_entry(entry))
                elif entry.ino not in reached:
                    reached.add(entry.ino)
                    next(steps, None)
                    if _is_dir(inodes.get(entry.ino)):
                        next_frontier.append(entry.ino)
        frontier = next_frontier
    for top in sorted(_loop_tops(set(names_of) - reached, names_of)):
        yield Finding(f"the directory {context.names.path(top)} (inode {top}) and what is below it hang in a "
                      "loop that the root does not reach",
                      f"cut the loop: it goes to /lost+found/#{top}", _remove_entries(names_of[top]))


def _loop_tops(unreached: set[int], names_of) -> set[int]:
    """Of inodes that have names but are not reached from the root, the ones
    whose chain of parents comes back to itself (an orphan at the top of a
    chain is the next check's business)."""
    tops, settled = set(), set()
    for start in sorted(unreached):
        chain, current = [], start
        while current in unreached and current not in settled and current not in chain:
            chain.append(current)
            current = names_of[current][0].parent if names_of.get(current) else None
        if current in chain:
            tops.add(current)
        settled.update(chain)
    return tops


def no_orphan_inodes(context: Context, connection: Connection):
    inodes = _inodes(context, connection)
    entries = list(state_fsck.entries(connection))
    named, parents = {entry.ino for entry in entries}, {entry.parent for entry in entries}
    for ino in sorted(set(inodes) - named - {ROOT_INO}):
        row = inodes[ino]
        chunk_count = len(chunks.all_rows_of(connection, ino))
        if row.nlink <= 0:
            yield Finding(f"inode {ino} was deleted while open and never purged ({row.size} bytes)",
                          "purge it, as zero-fuse does at mount", _purge(context, ino))
        elif chunk_count or ino in parents or stat.S_ISLNK(row.mode):
            yield Finding(f"inode {ino} ({_kind(row)}, {row.size} bytes) has data but no name",
                          f"reconnect it as /lost+found/#{ino}", _reconnect(ino, row))
        else:
            yield Finding(f"inode {ino} ({_kind(row)}) has no name and holds nothing",
                          "delete it", _purge(context, ino))


def link_counts_match_entries(context: Context, connection: Connection):
    inodes = _inodes(context, connection)
    named: dict[int, int] = defaultdict(int)
    subdirs: dict[int, int] = defaultdict(int)
    for entry in state_fsck.entries(connection):
        named[entry.ino] += 1
        if _is_dir(inodes.get(entry.ino)):
            subdirs[entry.parent] += 1
    for ino, row in inodes.items():
        if ino != ROOT_INO and not named[ino]:
            continue  # an orphan, reported by no_orphan_inodes
        expected = named[ino]
        if _is_dir(row):
            # "." and the parent's entry (the root has no parent entry but is its own ".."), plus each ".."
            expected = 2 + subdirs[ino]
        if row.nlink != expected:
            yield Finding(f"{context.names.path(ino)}: link count {row.nlink}, but the entries make it {expected}",
                          f"set it to {expected}", _set_nlink(ino, expected))


CHECKS = (root_is_a_directory, entries_name_existing_inodes, entries_are_in_directories, tree_is_connected,
          no_orphan_inodes, link_counts_match_entries)


def _kind(row) -> str:
    return {stat.S_IFDIR: "a directory", stat.S_IFLNK: "a symlink", stat.S_IFREG: "a file"}.get(
        stat.S_IFMT(row.mode), "a special file")


def _remove_entry(entry):
    return lambda connection: namespace.delete_dentry(connection, entry.parent, entry.name)


def _remove_entries(entries):
    def fix(connection):
        for entry in entries:
            namespace.delete_dentry(connection, entry.parent, entry.name)
    return fix


def _set_nlink(ino: int, nlink: int):
    return lambda connection: namespace.update_inode(connection, ino, nlink=nlink)


def _purge(context: Context, ino: int):
    def fix(connection):
        return [context.cache.chunk_path(ino, idx) for idx in namespace.delete_inode(connection, ino)]
    return fix


def _reconnect(ino: int, row):
    def fix(connection):
        found = _lost_and_found(connection)
        namespace.insert_dentry(connection, found, f"#{ino}".encode(), ino)
        if _is_dir(row):
            found_row = namespace.get_inode(connection, found)
            namespace.update_inode(connection, found, nlink=found_row.nlink + 1)
        if row.nlink != 1 and not _is_dir(row):
            namespace.update_inode(connection, ino, nlink=1)
    return fix


def _lost_and_found(connection: Connection) -> int:
    """/lost+found, made owner-only on first use (what it holds lost its own permissions' context)."""
    existing = namespace.lookup(connection, ROOT_INO, LOST_AND_FOUND)
    if existing is not None:
        return existing
    root = namespace.get_inode(connection, ROOT_INO)
    now = time.time_ns()
    ino = namespace.insert_inode(connection, mode=stat.S_IFDIR | 0o700, uid=root.uid, gid=root.gid, nlink=2,
                                 size=0, atime_ns=now, mtime_ns=now, ctime_ns=now, rdev=0, target=None)
    namespace.insert_dentry(connection, ROOT_INO, LOST_AND_FOUND, ino)
    namespace.update_inode(connection, ROOT_INO, nlink=root.nlink + 1)
    return ino
