"""`zero pin` / `zero unpin`: keep files or trees in the cache ("available offline")."""

from __future__ import annotations

import os
import sys

from zero import wakeup
from zero.cachedir import CacheDir
from zero.cli.common import find_cache, open_state
from zero.errors import ZeroError
from zero.locking import holder_pid
from zero.state import pins


def _targets(paths) -> tuple[CacheDir, list[int]]:
    cache = None
    inos = []
    for location in paths:
        found, mount = find_cache(location)
        if mount is None:
            raise ZeroError(f"{location} is not inside a mounted zero filesystem; pin a path under the mountpoint")
        if cache is not None and found.root != cache.root:
            raise ZeroError("give paths of one zero filesystem at a time")
        cache = found
        inos.append(os.lstat(location).st_ino)  # zero's inode number: the mount passes it through
    return cache, inos


def pin(args, config) -> int:
    cache, inos = _targets(args.paths)
    database = open_state(cache, config)
    try:
        with database.write() as connection:
            pins.add(connection, inos)
    finally:
        database.dispose()
    _tell_worker(cache)
    print(f"Pinned {len(inos)} path(s); zero-worker brings them into the cache and keeps them there")
    return 0


def unpin(args, config) -> int:
    cache, inos = _targets(args.paths)
    database = open_state(cache, config)
    try:
        with database.write() as connection:
            were_pinned = set(pins.remove(connection, inos))
    finally:
        database.dispose()
    for location, ino in zip(args.paths, inos):
        if ino not in were_pinned:
            print(f"{location} was not pinned; nothing to do (a file inside a pinned folder is unpinned by "
                  "unpinning the folder)")
    if were_pinned:
        _tell_worker(cache)
        print(f"Unpinned {len(were_pinned)} path(s); their chunks may be evicted again")
    return 0


def _tell_worker(cache: CacheDir) -> None:
    wakeup.notify(cache.wake, "pins")
    wakeup.notify(cache.wake, wakeup.WORKER)
    if holder_pid(cache.lock_path("worker")) is None:
        print(f"note: zero-worker is not running; start it (zero-worker {cache.root}) for this to take effect",
              file=sys.stderr)
