"""`zero fsck <cache>`: check the state, the cache files and the remotes
against each other (zero/meta/fsck); ``--repair`` repairs what loses
nothing. Exit codes as e2fsck's: 0 clean, 1 all repaired, 4 errors left,
8 a check could not run or fsck itself failed (bits may combine)."""

from __future__ import annotations

import contextlib
import sys
from collections import defaultdict

from zero.cachedir import CacheDir
from zero.cli.common import find_cache, human, open_state
from zero.errors import CacheLocked, ZeroError
from zero.locking import PidLock, holder_pid
from zero.meta.fsck import OPERATIONAL as OPERATIONAL_ERROR  # also when fsck itself fails, as e2fsck

ROLES = {"mount": "zero mount", "fuse": "zero-fuse", "worker": "zero-worker"}


def add_arguments(command) -> None:
    command.add_argument("cache", help="the cache folder (zero-fuse and zero-worker must not be running on it)")
    command.add_argument("--repair", action="store_true",
                         help="repair what can be repaired without losing anything that exists anywhere")
    command.add_argument("--accept-loss", action="store_true",
                         help="with --repair: turn bytes that exist nowhere into holes (they read as zeros)")
    command.add_argument("--no-remote", action="store_true",
                         help="do not list the remotes; the check of objects is reported as skipped")


def fsck(args, config) -> int:
    from zero.meta import fsck as checking
    from zero.meta.fsck.remotes import RemoteView
    from zero.state import db as state_db
    from zero.wiring import build_remotes

    cache, mountpoint = find_cache(args.cache)
    if args.accept_loss and not args.repair:
        raise ZeroError("--accept-loss changes the state, so it goes with --repair: zero fsck --repair --accept-loss")
    with _nothing_else_uses(cache, mountpoint):
        database = open_state(cache, config)
        try:
            settings = state_db.format_settings(database)
            view = RemoteView([] if args.no_remote else build_remotes(config), settings["fs_id"],
                              enabled=not args.no_remote)
            print(f"Checking {cache.root} (filesystem {settings['fs_id']})"
                  f"{', repairing what is safe' if args.repair else ''}")
            outcome = checking.run(database, cache, int(settings["chunk_size"]), view, repair=args.repair,
                                   accept_loss=args.accept_loss, progress=_progress_bar)
        finally:
            database.dispose()
    _report(outcome, args)
    return outcome.exit_code


@contextlib.contextmanager
def _nothing_else_uses(cache: CacheDir, mountpoint):
    """Refuse while zero-fuse, zero-worker or zero mount holds the cache, and
    hold their locks for the run so neither can start in the middle of it."""
    users = [f"{name} (pid {pid})" for role, name in ROLES.items()
             if (pid := holder_pid(cache.lock_path(role))) is not None]
    if users or mountpoint is not None:
        where = f", mounted on {mountpoint}" if mountpoint else ""
        raise CacheLocked(f"{' and '.join(users) or 'zero-fuse'} {'is' if len(users) < 2 else 'are'} using "
                          f"{cache.root}{where}; zero fsck checks a cache only while nothing uses it. Unmount "
                          "it (zero umount <mountpoint>) and stop zero-worker, then run zero fsck again")
    locks = [PidLock(cache.lock_path(role), name) for role, name in ROLES.items()]
    held = []
    try:
        for lock in locks:
            lock.acquire()
            held.append(lock)
        yield
    finally:
        for lock in held:
            lock.release()


def _progress_bar(iterable, total: int, desc: str):
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, unit="", leave=False, file=sys.stderr,
                disable=not sys.stderr.isatty())


def _report(outcome, args) -> None:
    for result in outcome.results:
        status = f"{len(result.findings)} problem(s)" if result.findings else "ok"
        if result.skipped:
            status = ("skipped" if not result.findings else status + ", partly skipped") + f": {result.skipped}"
        print(f"  {result.title}: {status}")
        for finding in result.findings:
            print(f"    {finding.problem}")
            print(f"      -> {_verdict(finding, args)}")
    lost = [finding.lost for finding in outcome.findings if finding.lost is not None]
    if lost:
        print("Data that exists nowhere (not in the cache, on no remote):")
        by_file = defaultdict(list)
        for item in lost:
            by_file[item.path].append(item)
        for path, ranges in by_file.items():
            spans = ", ".join(f"{item.start}-{item.end - 1}" for item in sorted(ranges, key=lambda r: r.start)
                              if item.end > item.start) or "none within the file's size"
            print(f"  {path}: bytes {spans} ({human(sum(item.end - item.start for item in ranges))})")
    _summary(outcome, args)


def _verdict(finding, args) -> str:
    if finding.repaired:
        return f"repaired: {finding.repair}"
    if finding.fix is None:
        return "cannot be repaired safely; it needs a person (docs/operations.md, section zero fsck, says what to do)"
    if finding.lost is not None:
        return f"left as it is; --repair --accept-loss would {finding.repair}"
    return f"--repair would {finding.repair}"


def _summary(outcome, args) -> None:
    findings = outcome.findings
    repaired = sum(finding.repaired for finding in findings)
    left = len(findings) - repaired
    if not findings:
        print("No problems found." if outcome.exit_code == 0 else "No problems found in what could be checked.")
    else:
        print(f"{len(findings)} problem(s): {repaired} repaired, {left} left.")
    if any(not finding.repaired and finding.fix is not None and finding.lost is None for finding in findings):
        print(f"Run `zero fsck --repair {args.cache}` to repair what is safe (nothing that exists anywhere is lost).")
    if any(not finding.repaired and finding.lost is not None for finding in findings):
        print("Bytes that exist nowhere: first make sure every remote is in the config and reachable (a missing "
              f"remote hides its copies), then `zero fsck --repair --accept-loss {args.cache}` makes them holes.")
    if outcome.exit_code & 8:
        print("A check was skipped because a remote could not be listed: run again when it answers, or pass "
              "--no-remote to check only the cache.")
