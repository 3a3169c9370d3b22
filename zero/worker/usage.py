"""How much disk the cache's chunk files take, worked out from the state
instead of a walk of every file (decision 111): clean chunks as their upload
or fault-in recorded them (zero.fsutil.settled_bytes), plus a look at the file
of each chunk not uploaded yet, which zero-fuse may still be writing.

The walk cost 0.83 s of CPU for 100,000 chunk files and grew with the cache.
The worker measured once a second while it uploaded or fetched, and priming
measured inside a write transaction, holding zero-fuse's writes back for as
long. Now the cost grows with the upload backlog only. The backlog is looked
at whole, not sampled: a sample of a few large chunks among many small files
came out a third low as often as not, and priming fetched into a full cache on
those figures (a review). `zero status` still walks: a person asking wants
what is on the disk, orphaned files included.
"""

from __future__ import annotations

from sqlalchemy import Connection

from zero.cachedir import CacheDir
from zero.state import backlog


def cache_usage(connection: Connection, cache: CacheDir) -> int:
    """Disk bytes of the cache's chunk files, read in ``connection``'s transaction."""
    return backlog.clean_bytes(connection) + cache.bytes_of(backlog.unuploaded(connection))
