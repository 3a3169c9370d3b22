"""`zero pin` / `zero unpin`: keep files or trees in the cache ("available offline")."""

from __future__ import annotations

import sys

from zero import wakeup
from zero.cachedir import CacheDir
from zero.cli.common import inodes_of, open_state
from zero.cli.warmup import wait_local
from zero.errors import ZeroError
from zero.locking import holder_pid
from zero.state import pins, requests, warmup as warming


def pin(args, config) -> int:
    cache, inos = inodes_of(args.paths, "pin")
    database = open_state(cache, config)
    try:
        with database.write() as connection:
            pins.add(connection, inos)
            asked = warming.ask(connection, inos, requests.PIN)
        _tell_worker(cache)
        if getattr(args, "wait", False) and asked.wanted:
            if holder_pid(cache.lock_path("worker")) is None:
                raise ZeroError(f"pinned, but zero-worker is not running, so nothing can be fetched; start it "
                                f"(zero-worker {cache.root}) and the pinned files come into the cache")
            wait_local(cache, database, asked.wanted, args.timeout, "pinning")
            print(f"Pinned {len(inos)} path(s): all {asked.files} file(s) are in the cache and stay there")
            return 0
    finally:
        database.dispose()
    print(f"Pinned {len(inos)} path(s); zero-worker brings them into the cache and keeps them there "
          f"({len(asked.wanted)} chunk(s) to fetch; zero pin --wait waits for them)")
    return 0


def unpin(args, config) -> int:
    cache, inos = inodes_of(args.paths, "unpin")
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
