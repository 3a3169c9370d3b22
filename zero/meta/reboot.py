"""After the machine restarted: chunk files uploaded or fetched just before
may have lost their bytes with the page cache.

Neither the uploader nor a fault-in syncs a chunk's file before marking it
clean (a sync per chunk cost a third of a sequential write's speed, decision
73; about a fifth of a cold read's, decision 76), so a power cut can leave a
clean row over a file that is short or holds zeros. Read, it would give
wrong data. (Rewritten in part, it would be uploaded with those zeros: so a
write that turns a clean chunk dirty syncs the file first, zero.fuse.leases,
and only clean files are in doubt here.) The kernel
writes dirty pages back within about 30 s, so only chunks written shortly
before the last activity are in doubt. When either process starts on another
boot than the last one, the files of the clean chunks written within
SUSPECT_WINDOW_S of the last recorded activity are deleted: their rows stay
clean without a file, which is an interrupted eviction, and the worker
completes it as one (zero/worker/recovery.py); a read then faults the chunk
in from the remote, which holds it since it is clean. A boot after a clean
shutdown costs a few re-fetches, never data.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from zero.cachedir import CacheDir
from zero.state import chunks
from zero.state import db as state_db
from zero.state.db import Database

log = logging.getLogger(__name__)

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
BOOT_ID_KEY = "boot_id"
SUSPECT_WINDOW_S = 600.0  # the kernel's 30 s writeback, and room for a congested disk


def current_boot() -> str | None:
    try:
        return BOOT_ID_PATH.read_text().strip()
    except OSError:
        return None  # not Linux, or no /proc: nothing to compare


def distrust_recent_clean_files(database: Database, cache: CacheDir) -> int:
    """On a new boot, delete the files of recently written clean chunks; returns how many."""
    boot = current_boot()
    if boot is None:
        return 0
    dropped = 0
    with database.write() as connection:
        last_boot = state_db.get_meta(connection, BOOT_ID_KEY)
        if last_boot == boot:
            return 0
        # None: a new cache (nothing clean yet), or one an older zero made, which kept no boot id.
        suspects = chunks.recently_written_clean(connection, SUSPECT_WINDOW_S) if last_boot is not None else []
        for row in suspects:
            try:
                os.unlink(cache.chunk_path(row.ino, row.idx))
                dropped += 1
            except FileNotFoundError:
                pass
        state_db.set_meta(connection, BOOT_ID_KEY, boot)
    if dropped:
        log.info("The machine restarted since zero last ran: %d chunk(s) uploaded in the last %d minutes before "
                 "that will be read back from the remotes, in case a power cut took their cached copy",
                 dropped, SUSPECT_WINDOW_S // 60)
    return dropped
