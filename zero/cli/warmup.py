"""`zero warmup <path>... [--wait]`: bring trees into the cache before they
are read (the worker fetches them, as for a pin, but nothing keeps them
there afterwards). With --wait it shows the progress and returns once all is
local, or says what could not be fetched and exits non-zero.

`zero pin --wait` waits the same way (``wait_local``)."""

from __future__ import annotations

import sys
import time

from zero import wakeup
from zero.cli.common import human, inodes_of, open_state
from zero.cli.progress import bar
from zero.errors import ZeroError
from zero.locking import holder_pid
from zero.state import namespace, requests, warmup as warming
from zero.worker.remotes import PROBE_INTERVAL_S

# A remote that is down may be back at the worker's next look; only after that
# are chunks that only it holds reported as not fetchable.
BLOCKED_GRACE_S = PROBE_INTERVAL_S + 2.0
NAMED_FILES = 10


def warmup(args, config) -> int:
    cache, inos = inodes_of(args.paths, "warm up")
    database = open_state(cache, config)
    try:
        with database.write() as connection:
            asked = warming.ask(connection, inos, requests.WARMUP)
            if args.wait and asked.wanted_bytes + asked.local_bytes > config.target_disk_usage_bytes:
                raise ZeroError(  # rolls the requests back
                    f"{' '.join(args.paths)} hold(s) {human(asked.wanted_bytes + asked.local_bytes)}, more than "
                    f"targetDiskUsage ({human(config.target_disk_usage_bytes)}): the worker would evict the start "
                    f"of the tree to make room for its end. Warm up less at a time, or raise targetDiskUsage "
                    f"(then zero reload)")
        running = holder_pid(cache.lock_path("worker")) is not None
        if asked.wanted:
            wakeup.notify(cache.wake, wakeup.WORKER)
        if not asked.wanted:
            print(f"Everything in {' '.join(args.paths)} is in the cache already ({asked.files} file(s), "
                  f"{human(asked.local_bytes)})")
            return 0
        if not running:
            raise ZeroError(f"zero-worker is not running, so nothing can be fetched; {len(asked.wanted)} chunk(s) "
                            f"wait for it. Start it (zero-worker {cache.root}) and run zero warmup again")
        if not args.wait:
            print(f"Asked zero-worker to fetch {len(asked.wanted)} chunk(s), {human(asked.wanted_bytes)}, of "
                  f"{asked.files} file(s); zero warmup --wait shows the progress")
            return 0
        wait_local(cache, database, asked.wanted, args.timeout, "warming up")
    finally:
        database.dispose()
    print(f"Warmed up {asked.files} file(s): {len(asked.wanted)} chunk(s), {human(asked.wanted_bytes)} fetched; "
          f"all of it is in the cache")
    return 0


def wait_local(cache, database, wanted: dict, timeout_s: float, desc: str) -> None:
    """Return once every chunk in ``wanted`` is local; raise ZeroError naming
    what could not be fetched (its remotes down, its object lost) or timed out."""
    listener = wakeup.WakeListener(cache.wake, wakeup.FUSE)  # the worker wakes "fuse" after each fetch
    listener.start()
    stuck_since = None
    result = None
    try:
        with bar(total=len(wanted), unit="chunk", desc=desc) as progress:
            def arrived():
                nonlocal stuck_since, result
                with database.read() as connection:
                    result = warming.progress(connection, wanted)
                left = len(result.pending) + len(result.failed) + len(result.blocked)
                progress.update(len(wanted) - left - progress.n)
                if result.settled and not (result.failed or result.blocked):
                    return True
                if not result.settled:
                    stuck_since = None
                    return None
                stuck_since = stuck_since or time.monotonic()
                return True if not result.blocked or time.monotonic() - stuck_since >= BLOCKED_GRACE_S else None

            wakeup.wait_for(listener, arrived, timeout_s, lambda: ZeroError(
                f"{len(result.pending) if result else len(wanted)} chunk(s) were not fetched within {timeout_s:g}s; "
                f"see zero status and the zero-worker log"))
    finally:
        listener.stop()
    if result.failed or result.blocked:
        raise ZeroError(_not_fetched(database, wanted, result))


def _not_fetched(database, wanted: dict, result: warming.Progress) -> str:
    got = len(wanted) - len(result.failed) - len(result.blocked) - len(result.pending)
    reasons = []
    down = sorted({name for holders in result.blocked.values() for name in holders})
    if result.blocked:
        reasons.append(f"{len(result.blocked)} are only on remote(s) that are down now "
                       f"({', '.join(down) or 'none configured'}; zero status says why); run this again once "
                       f"they are back")
    if result.failed:
        reasons.append(f"{len(result.failed)} could not be read back (first: {next(iter(result.failed.values()))})")
    with database.read() as connection:
        inos = sorted({ino for ino, _ in [*result.blocked, *result.failed]})
        names = [(namespace.path_of(connection, ino) or b"(unlinked)").decode("utf-8", "surrogateescape")
                 for ino in inos[:NAMED_FILES]]
    more = f" and {len(inos) - NAMED_FILES} more" if len(inos) > NAMED_FILES else ""
    return (f"fetched {got} of {len(wanted)} chunk(s); {len(wanted) - got} could not be: {'; '.join(reasons)}. "
            f"Files not fully in the cache: {', '.join(names)}{more}")
