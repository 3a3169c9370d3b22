"""`zero scrub <cache>`: read every stored copy back now, verify it, quarantine
the bad ones and repair them from the cache or another replica; then say what
was found and which files, if any, have no good copy left anywhere.

Exit status 0 when every copy is good or was repaired, 1 when some copy could
not be repaired. It may run beside the worker (the worker scrubs slowly on
its own when scrubRate is set)."""

from __future__ import annotations

from tqdm.contrib.logging import logging_redirect_tqdm

from zero.cli import progress
from zero.cli.common import find_cache, human
from zero.state import quarantine

EXIT_UNREPAIRED = 1


def _copies(count: int) -> str:
    return f"{count} cop{'y' if count == 1 else 'ies'}"


def scrub(args, config) -> int:
    from zero.meta.scrub import Scrubber
    from zero.wiring import build_context
    from zero.worker.remotes import RemoteKeeper

    cache, _ = find_cache(args.location)
    context = build_context(config, cache)
    try:
        keeper = RemoteKeeper(context)
        for remote in context.pool.remotes:
            keeper.check(remote)
        keeper.refresh()
        with context.database.read() as connection:
            total_copies, total_bytes = quarantine.copies_total(connection)
        # A bad copy's warning goes above the bar, not into its line.
        with progress.bar(total_bytes, unit="B", desc="scrubbing", unit_scale=True, unit_divisor=1024) as bar, \
                logging_redirect_tqdm():
            summary = Scrubber(context, keeper.still_ours).scrub_all(lambda copies, size: bar.update(size))
    finally:
        context.database.dispose()
    print(f"zero scrub of {cache.root}: {_copies(summary.checked)} checked ({human(total_bytes)} stored), "
          f"{summary.bad} bad {_copies(summary.bad).split()[1]} found, {summary.repaired} repaired, "
          f"{summary.unrepairable} unrepairable")
    if summary.skipped:
        print(f"  {_copies(summary.skipped)} on remotes that did not answer were not checked; "
              "run zero scrub again once they do (zero status shows their health)")
    if summary.damage:
        print("  No good copy is left anywhere (in the cache or a remote) of these; restore these files "
              "from a backup, or delete them:")
        for damage in summary.damage:
            print(f"    {damage}")
    elif summary.unrepairable:
        print("  Every file still has a good copy; the bad copies wait for their remote to take a new one "
              "(zero-worker tries again every 10 minutes, or run zero scrub again)")
    return EXIT_UNREPAIRED if summary.unrepairable or summary.damage else 0
