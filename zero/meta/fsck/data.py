"""The data's invariants: rows belong to inodes that exist, nothing is
mid-move while no process runs, a chunk the state calls local has its cache
file (of the uploaded size, when clean), every cache file belongs to a local
chunk, and every object a chunk needs is on a remote that the placements
name, as that remote's own listing says.

A chunk's state changes only through chunks.transition() as Owner.FSCK.
"""

from __future__ import annotations

from sqlalchemy import Connection

from zero.meta.fsck.findings import Context, Finding
from zero.meta.fsck.remotes import Copy
from zero.state import chunks, namespace, objects
from zero.state import fsck as state_fsck
from zero.state.chunkstate import ChunkState, Owner

D, U, C, R, F = (ChunkState.DIRTY, ChunkState.UPLOADING, ChunkState.CLEAN, ChunkState.REMOTE,
                 ChunkState.FETCHING)
NEEDS_OBJECT = frozenset({C.value, R.value, F.value})  # the content is (also) the object's


def rows_belong_to_existing_inodes(context: Context, connection: Connection):
    for table, inos in state_fsck.rows_of_missing_inodes(connection).items():
        for ino in inos:
            yield Finding(f"the {table} table has rows for inode {ino}, which does not exist",
                          "delete them", _delete_rows(table, ino))


def nothing_is_mid_move(context: Context, connection: Connection):
    """No process runs, so no write lease is held and no upload or fault-in is under way."""
    for row in _chunk_rows(context, connection):
        if row.state == U.value:
            yield Finding(f"{_where(context, row)} is marked uploading, but no worker runs",
                          "mark it dirty: the worker uploads it again", _move(row, U, D))
        elif row.state == F.value:
            yield Finding(f"{_where(context, row)} is marked being fetched, but no worker runs",
                          "mark it evicted: it is fetched when read", _move(row, F, R))
        if row.leased:
            yield Finding(f"{_where(context, row)} is leased for writing, but zero-fuse does not run",
                          "release the lease", lambda c, row=row: chunks.release_leases(c, row.ino, [row.idx]))


def local_chunks_have_their_files(context: Context, connection: Connection):
    files = _chunk_file_sizes(context)
    sizes, holders = state_fsck.object_sizes(connection), state_fsck.placements(connection)
    for row in _chunk_rows(context, connection):
        size, key = files.get((row.ino, row.idx)), row.object_key
        if not chunks.is_local(row) or (size is not None and size <= context.chunk_size
                                        and (row.state != C.value or sizes.get(key, size) == size)):
            continue  # the common case, decided without a path or a listing
        where = _where(context, row)
        copy = context.remotes.copy(key, holders.get(key, ())) if key in sizes else Copy.ABSENT
        if size is None and chunks.is_unuploaded(row):
            yield _lost(context, connection, row, f"{where}: its cache file is missing and it was never uploaded")
        elif size is None and copy is Copy.PRESENT:
            yield Finding(f"{where}: its cache file is missing", "mark it evicted: it is fetched from a remote "
                          "when read", _move(row, C, R, stored_bytes=0))
        elif size is None and copy is Copy.UNKNOWN:
            yield Finding(f"{where}: its cache file is missing, and the remotes that may hold its object "
                          f"could not be checked ({context.remotes.skip_reason()})")
        elif size is None:
            yield _lost(context, connection, row, f"{where}: its cache file is missing and no remote holds its object")
        elif size > context.chunk_size:
            yield Finding(f"{where}: its cache file holds {size} bytes, more than a chunk ({context.chunk_size})")
        elif row.state == C.value and key in sizes and size != sizes[key]:
            problem = f"{where}: its cache file holds {size} bytes, but {sizes[key]} were uploaded"
            if copy is Copy.PRESENT:
                yield Finding(problem, "drop the cache file and mark it evicted: the uploaded copy is fetched "
                              "when read", _move(row, C, R, stored_bytes=0, unlink=context.cache.chunk_path(row.ino, row.idx)))
            else:
                yield Finding(problem + ", and no remote is known to hold the upload")


def every_cache_file_is_a_local_chunk(context: Context, connection: Connection):
    """A file with no chunk row is an orphan; one of an evicted chunk is a fault-in that never committed."""
    rows = {(row.ino, row.idx): row for row in chunks.all_rows(connection)}
    for (ino, idx), size in _chunk_file_sizes(context).items():
        row, path = rows.get((ino, idx)), context.cache.chunk_path(ino, idx)
        if row is None:
            yield Finding(f"the cache file {path} belongs to no chunk (the state reads those bytes as a hole)",
                          "delete it, as zero-fuse does at mount", _unlink(path))
        elif not chunks.is_local(row):
            yield Finding(f"{_where(context, row)} is evicted, but its cache file {path} is still there",
                          "delete the file, as zero-worker does at start", _unlink(path))


def objects_are_where_placements_say(context: Context, connection: Connection):
    """Placements against the remotes' listings, then every chunk that needs its object against both."""
    sizes, holders = state_fsck.object_sizes(connection), state_fsck.placements(connection)
    for key, names in sorted(holders.items()):
        for name in sorted(names):
            if context.remotes.holds(name, key) is False:
                yield Finding(f"the state says remote {name!r} holds object {key}, but its listing does not have "
                              "it", "forget that copy (the next upload of the same bytes stores it again)",
                              lambda c, key=key, name=name: objects.forget_copy(c, key, name))
    files = None
    for row in _chunk_rows(context, connection):
        if row.state not in NEEDS_OBJECT:
            continue
        key = row.object_key
        if key is None or key not in sizes:
            copy = Copy.ABSENT
            why = "names no object" if key is None else f"names object {key}, which the state does not know"
        else:
            copy = context.remotes.copy(key, holders.get(key, ()))
            why = f"its object {key} is on no remote"
        if copy is not Copy.ABSENT:
            continue  # present, or unknown: the check says which remotes it skipped
        if row.state == C.value:
            files = _chunk_file_sizes(context) if files is None else files
            if (row.ino, row.idx) in files:  # a missing file is local_chunks_have_their_files' finding
                yield Finding(f"{_where(context, row)} {why}", "mark it dirty: the worker uploads the cache "
                              "file again", _move(row, C, D))
        elif key is None:  # restored from metadata backed up before its upload (decision 110)
            yield _lost(context, connection, row, f"{_where(context, row)}: its last change was never uploaded "
                        "from the machine that wrote it")
        else:
            yield _lost(context, connection, row, f"{_where(context, row)} is evicted and {why}")


objects_are_where_placements_say.needs_remotes = True

CHECKS = (rows_belong_to_existing_inodes, nothing_is_mid_move, local_chunks_have_their_files,
          every_cache_file_is_a_local_chunk, objects_are_where_placements_say)


def _chunk_rows(context: Context, connection: Connection):
    """Chunk rows of inodes that exist (rows of missing inodes are the first check's finding)."""
    inodes = {row.ino for row in state_fsck.inode_rows(connection)}
    rows = chunks.all_rows(connection)
    return [row for row in context.steps(rows, len(rows), "chunks") if row.ino in inodes]


def _chunk_file_sizes(context: Context) -> dict[tuple[int, int], int]:
    return {(ino, idx): st.st_size for ino, idx, _path, st in context.cache.iter_chunk_files()}


def _where(context: Context, row) -> str:
    paths = context.names.paths(row.ino)
    others = f" (and {len(paths) - 1} other name(s))" if len(paths) > 1 else ""
    start = row.idx * context.chunk_size
    return f"{paths[0]}{others}, chunk {row.idx} (bytes {start}-{start + context.chunk_size - 1})"


def _lost(context: Context, connection: Connection, row, problem: str) -> Finding:
    lost = context.lost_range(row.ino, row.idx, namespace.get_inode(connection, row.ino).size)
    return Finding(f"{problem}: {lost.end - lost.start} byte(s) exist nowhere",
                   "make them a hole (they read as zeros)", _forget_chunk(context, row), lost=lost)


def _move(row, from_state: ChunkState, to_state: ChunkState, unlink: str | None = None, **values):
    def fix(connection):
        chunks.transition(connection, Owner.FSCK, [from_state], to_state, ino=row.ino, idx=row.idx,
                          values=values or None)
        return [unlink] if unlink else []
    return fix


def _forget_chunk(context: Context, row):
    def fix(connection):
        chunks.delete_chunk(connection, row.ino, row.idx)
        return [context.cache.chunk_path(row.ino, row.idx)]
    return fix


def _unlink(path: str):
    return lambda connection: [path]


def _delete_rows(table: str, ino: int):
    return lambda connection: state_fsck.delete_rows_of(connection, table, ino)
