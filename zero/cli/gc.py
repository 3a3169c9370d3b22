"""`zero gc`: delete remote objects nobody references (the worker does it every 10 minutes)."""

from __future__ import annotations

from zero import config as config_module
from zero.cli.common import find_cache
from zero.errors import ZeroError


def gc(args, config) -> int:
    from zero.wiring import build_context
    from zero.worker.collector import Collector

    cache, _ = find_cache(args.location)
    if not config.database_path(cache.root).exists():
        raise ZeroError(f"no zero state in {cache.root}")
    if args.grace is not None:
        config = config_module.replace_grace(config, args.grace)
    context = build_context(config, cache)
    try:
        deleted = Collector(context).collect()
    finally:
        context.database.dispose()
    print(f"Deleted {deleted} unused object(s) from the remotes")
    return 0
