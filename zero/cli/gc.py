"""`zero gc`: what the collector would delete from the remotes, and with
``--delete`` delete it (the worker does it every 10 minutes anyway).

Without ``--delete`` nothing is changed: it says how many unused objects are
past the grace period and would go, and how many wait it out (and until when)."""

from __future__ import annotations

import time

from zero import config as config_module
from zero.cli.common import find_cache, human, open_state
from zero.errors import ZeroError
from zero.state import objects


def gc(args, config) -> int:
    cache, _ = find_cache(args.location)
    if not config.database_path(cache.root).exists():
        raise ZeroError(f"no zero state in {cache.root}")
    if args.grace is not None:
        config = config_module.replace_grace(config, args.grace)
    if not args.delete:
        return _dry_run(cache, config)
    from zero.cli.progress import bar
    from zero.wiring import build_context
    from zero.worker.collector import Collector

    from zero.meta import writer

    context = build_context(config, cache)
    try:
        # Only the writer's cache deletes: another's state does not know the writer's newest objects.
        writer.check_one_shot(context.database, context.pool.remotes, context.fs_id)
        collector = Collector(context)
        with bar(unit="object", desc="deleting") as progress:
            deleted = collector.collect(progress=progress)
    finally:
        context.database.dispose()
    if collector.waited_for_uploads:
        print("Deleted nothing: chunks are being uploaded (or were, when zero-worker stopped: it finishes them "
              "when it runs), or another collection is under way, and what is being stored looks unused until "
              "then; run zero gc --delete again once zero sync returns")
        return 0
    print(f"Deleted {deleted} unused object(s) from the remotes")
    return 0


def _dry_run(cache, config) -> int:
    database = open_state(cache, config)
    try:
        with database.read() as connection:
            unused = objects.unreferenced(connection)
    finally:
        database.dispose()
    now, grace = time.time(), config.gc_grace_period_s
    # Not stamped yet: the grace period starts when the collector first sees them unused.
    ready = [row for row in unused if row.unreferenced_since is not None and row.unreferenced_since <= now - grace]
    waiting = [row for row in unused if row not in ready]
    print(f"Dry run (nothing deleted; add --delete to delete). Grace period {grace:g}s.")
    print(f"  would delete: {len(ready)} unused object(s), {human(sum(row.stored_bytes for row in ready))}")
    if waiting:
        stamps = [row.unreferenced_since or now for row in waiting]
        print(f"  waiting out the grace period: {len(waiting)} object(s), "
              f"{human(sum(row.stored_bytes for row in waiting))}; the first can go after "
              f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(min(stamps) + grace))}")
    else:
        print("  waiting out the grace period: none")
    print("  (objects on a remote that the state does not know are swept with --delete once older than the grace period)")
    return 0
