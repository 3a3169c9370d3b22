"""`zero drain <remote> <cache>`: copy everything a remote holds to the other
remotes, so that it can be removed from the config without losing a byte.

The remote is marked draining first: from that commit on, no copy on it is
recorded, whoever sent it (an upload group in flight, a scrub's repair), and
the worker's next upload group places nothing there. Then each object it
holds gets its ``replicas`` copies on the other healthy remotes before the
drained copy stops counting. Objects placed there before the mark are picked
up by the next pass, until none is left; after that none can appear, so
"empty" stays true (decision 93)."""

from __future__ import annotations

from zero import wakeup
from zero.cli.common import find_cache
from zero.cli.moving import move_off
from zero.cli.progress import bar as progress_bar
from zero.errors import ZeroError
from zero.state import objects, remotes

BATCH = 256


def drain(args, config) -> int:
    from zero.wiring import build_context
    from zero.worker.remotes import RemoteKeeper

    cache, _ = find_cache(args.location)
    context = build_context(config, cache)
    try:
        pool = context.pool
        if pool.member(args.remote) is None:
            raise ZeroError(f"no remote named {args.remote!r} is in the config; drain needs it there "
                            f"to read its objects (configured: {', '.join(r.name for r in pool.remotes)})")
        keeper = RemoteKeeper(context)
        for remote in pool.remotes:
            keeper.check(remote)
        others = [name for name in pool.durable_names() if name != args.remote]
        if len(others) < config.replicas:
            raise ZeroError(f"draining {args.remote} needs {config.replicas} other healthy remote(s) to hold the "
                            f"copies (replicas: {config.replicas}); healthy now: {', '.join(others) or 'none'}")
        with context.database.write() as connection:
            remotes.set_draining(connection, args.remote, True)
            total = objects.count_on(connection, args.remote)
        wakeup.notify(cache.wake, wakeup.WORKER)
        keeper.refresh()
        moved = 0
        with progress_bar(total=total, unit="object", desc=f"draining {args.remote}") as bar:
            while True:
                with context.database.read() as connection:
                    keys = objects.keys_on(connection, args.remote, BATCH)
                if not keys:
                    break
                for key in keys:
                    move_off(context, key, args.remote, "drain", always_copy=False)
                    moved += 1
                    bar.update(1)
    finally:
        context.database.dispose()
    print(f"Drained {args.remote}: {moved} object(s) now have their copies on the other remotes. "
          f"zero no longer needs anything on {args.remote}; you can remove it from the config "
          f"(and delete what it holds).")
    return 0

