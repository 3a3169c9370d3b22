"""The mount-time reconciler: after a crash of zero-fuse, make the state
match the chunk files again, and say what it repaired.

- No handle survives a restart, so no write lease does: all are released.
- Inodes with no name left (unlinked while open, then the crash) are purged.
- A chunk file with no chunk row is left over from a purge or truncate that
  did not finish unlinking: it is deleted.
- A write extends a file in memory first; the size is flushed in batches. So
  a dirty chunk file may reach past the recorded size: the size grows to it.
- A dirty chunk row without a file: the crash came between taking a new
  chunk's lease and creating its file, so nothing was written to it. It is a
  hole, and its row is deleted (the worker would otherwise retry it forever).
- Every chunk not uploaded counts as changed for the metadata backup: the
  inode change that would have carried it may be among what the stop lost.
"""

from __future__ import annotations

import logging
import os

from zero.cachedir import CacheDir
from zero.meta import reboot
from zero.state import changelog, chunks, namespace
from zero.state.db import Database

log = logging.getLogger(__name__)


def reconcile(database: Database, cache: CacheDir, chunk_size: int) -> dict[str, int]:
    repaired = {"leases": 0, "orphan_inodes": 0, "orphan_files": 0, "sizes": 0, "empty_chunks": 0}
    # Before anything reads them: after a restart, recently uploaded chunk files are in doubt.
    reboot.distrust_recent_clean_files(database, cache)
    with database.write() as connection:
        repaired["leases"] = chunks.release_all_leases(connection)
        purged_files = []
        for ino in namespace.unlinked_inodes(connection):
            purged_files.extend((ino, idx) for idx in namespace.delete_inode(connection, ino))
            repaired["orphan_inodes"] += 1
        rows = {(row.ino, row.idx): row for row in chunks.all_rows(connection)}
        purged = set(purged_files)  # unlinked after the commit, below; not leftovers
        grown: dict[int, int] = {}
        with_files = set()
        for ino, idx, path, st in cache.iter_chunk_files():
            with_files.add((ino, idx))
            row = rows.get((ino, idx))
            if row is None and (ino, idx) in purged:
                continue
            if row is None:
                os.unlink(path)
                repaired["orphan_files"] += 1
                continue
            if chunks.is_unuploaded(row):
                end = idx * chunk_size + st.st_size
                grown[ino] = max(grown.get(ino, 0), end)
        for (ino, idx), row in rows.items():
            if chunks.is_dirty(row) and (ino, idx) not in with_files:
                chunks.delete_chunk(connection, ino, idx)
                repaired["empty_chunks"] += 1
        for ino, end in grown.items():
            inode = namespace.get_inode(connection, ino)
            if inode is not None and inode.size < end:
                namespace.update_inode(connection, ino, size=end)
                repaired["sizes"] += 1
        # A write whose batched flush the stop lost changed no inode the journals see.
        changelog.count_unuploaded_as_changed(connection)
    for ino, idx in purged_files:
        try:
            os.unlink(cache.chunk_path(ino, idx))
        except FileNotFoundError:
            pass
    if any(repaired.values()):
        log.info("Recovered from an unclean stop: released %(leases)d write lease(s), purged %(orphan_inodes)d "
                 "unlinked file(s), deleted %(orphan_files)d leftover chunk file(s), restored the size of "
                 "%(sizes)d file(s) written just before the stop, dropped %(empty_chunks)d chunk record(s) "
                 "that were never written", repaired)
    return repaired
