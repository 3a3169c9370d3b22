"""Worker start-up: put back what a killed worker left half-done, and say so.

- ``uploading`` goes back to ``dirty`` (the object, if sent, is an orphan
  or a dedup hit next time); ``fetching`` goes back to ``remote``.
- Temporary fault-in files are removed.
- A ``clean`` chunk whose file is gone was evicted by a worker killed before
  its commit: it is ``remote`` (its object is durable, that is what clean means).
- A ``remote`` chunk whose file is present was fetched by a worker killed
  before its commit: the file is deleted (the next fault-in brings it again),
  so no file outside the state's accounting lingers in the cache.
"""

from __future__ import annotations

import logging
import os

from zero.meta import reboot
from zero.state import chunks, objects
from zero.worker.context import WorkerContext

log = logging.getLogger(__name__)


def recover(context: WorkerContext) -> dict[str, int]:
    repaired = {"uploading": 0, "fetching": 0, "temp_files": 0, "evictions": 0, "stray_files": 0}
    reboot.distrust_recent_clean_files(context.database, context.cache)  # their rows: evictions, below
    for entry in os.scandir(context.cache.tmp):
        os.unlink(entry.path)
        repaired["temp_files"] += 1
    with context.database.write() as connection:
        repaired.update(chunks.recover_interrupted(connection))
        for row in chunks.all_rows(connection):
            path = context.cache.chunk_path(row.ino, row.idx)
            if chunks.is_evictable(row) and not os.path.exists(path):
                chunks.mark_evicted(connection, row.ino, row.idx)
                repaired["evictions"] += 1
            elif chunks.needs_fetch(row) and os.path.exists(path):
                os.unlink(path)
                repaired["stray_files"] += 1
    if any(repaired.values()):
        log.info("Recovered from an unclean stop: %(uploading)d upload(s) and %(fetching)d fault-in(s) will be "
                 "redone, %(temp_files)d temporary file(s) removed, %(evictions)d interrupted eviction(s) "
                 "completed, %(stray_files)d unfinished fault-in file(s) removed", repaired)
    return repaired
