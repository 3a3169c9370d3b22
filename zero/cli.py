"""`zero`: admin commands. The only place zero's errors become exit codes.

    zero status <cache or mountpoint>
    zero pin <path>...     keep files local ("available offline")
    zero unpin <path>...
    zero sync <mountpoint> upload everything written so far, then return
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from sqlalchemy import delete, insert, select

from zero import config as config_module
from zero import logsetup, wakeup
from zero.cachedir import CacheDir
from zero.fsutil import disk_bytes
from zero.errors import ZeroError
from zero.locking import holder_pid

EXIT_ERROR = 1
EXIT_USAGE = 2


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


def mounted_caches() -> dict[Path, Path]:
    """mountpoint -> cache folder, for every zero filesystem mounted now."""
    found = {}
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            source, target = line.split()[:2]
            if source.startswith("zero:"):
                decode = lambda text: text.replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
                found[Path(decode(target))] = Path(decode(source[len("zero:"):]))
    return found


def find_cache(location: str) -> tuple[CacheDir, Path | None]:
    """A cache folder, or the cache behind a mountpoint or a path inside one."""
    path = Path(location).expanduser().absolute()
    mounts = mounted_caches()
    for candidate in [path, *path.parents]:
        if candidate in mounts:
            return CacheDir(mounts[candidate]), candidate
    if (path / "chunks").is_dir() or (path / "state.sqlite3").exists():
        return CacheDir(path), None
    raise ZeroError(f"{location} is neither a zero cache folder nor inside a mounted zero filesystem; "
                    "give the cache folder (the second argument of zero-fuse) or the mountpoint")


def open_state(cache: CacheDir, config):
    from zero.state import db as state_db
    path = config.database_path(cache.root)
    if not path.exists():
        raise ZeroError(f"no zero state at {path}; has zero-fuse or zero-worker run on {cache.root}?")
    return state_db.open_database(path)


# --- status -------------------------------------------------------------------------------

def status(args, config) -> int:
    from zero.state import chunks, counters, namespace, objects, schema
    from zero.state.db import get_meta
    from zero.worker.usage import measure

    cache, _ = find_cache(args.location)
    database = open_state(cache, config)
    with database.read() as connection:
        totals = namespace.totals(connection)
        by_state = chunks.counts_by_state(connection)
        count = counters.read_all(connection)
        remote_totals = objects.totals(connection)
        worker_status = json.loads(get_meta(connection, "worker_status") or "{}")
        dirty_rows = [row for row in chunks.all_rows(connection) if row.state in ("dirty", "uploading")]
        pins = [(row.ino, namespace.path_of(connection, row.ino)) for row in connection.execute(select(schema.pins))]
        pinned_bytes = {}
        for ino, _ in pins:
            tree = namespace.descendants(connection, ino)
            logical = sum((namespace.get_inode(connection, child).size or 0) for child in tree
                          if namespace.get_inode(connection, child) is not None)
            local = sum(row.stored_bytes for child in tree for row in chunks.all_rows_of(connection, child)
                        if row.state != "remote")
            pinned_bytes[ino] = (logical, local)
    database.dispose()
    usage = measure(cache).total_bytes
    target = config.target_disk_usage_bytes
    dirty_bytes = 0
    for row in dirty_rows:
        try:
            dirty_bytes += disk_bytes(os.stat(cache.chunk_path(row.ino, row.idx)))
        except FileNotFoundError:
            pass
    fuse_pid = holder_pid(cache.lock_path("fuse"))
    worker_pid = holder_pid(cache.lock_path("worker"))
    lines = [f"zero status of {cache.root}",
             f"  files:      {totals['files']} files, {human(totals['logical_bytes'])}",
             f"  cache:      {human(usage)} used of {human(target)} target ({100 * usage / target:.0f}%)"]
    if usage > target:
        if dirty_bytes >= usage - target:
            why = f"{human(dirty_bytes)} of written data is not uploaded yet"
            why += "; zero-worker is not running" if worker_pid is None else "; zero-worker is uploading it"
        elif worker_pid is None:
            why = "zero-worker is not running, so nothing is evicted"
        else:
            why = "pinned or recently fetched data; zero-worker is evicting"
        lines.append(f"  OVER TARGET by {human(usage - target)}: {why}")
    states = ", ".join(f"{name} {by_state.get(name, (0, 0))[0]}"
                       for name in ("dirty", "uploading", "clean", "remote", "fetching"))
    lines.append(f"  chunks:     {states}")
    rate = worker_status.get("upload_rate_bytes_per_s", 0.0) if worker_pid else 0.0
    lines.append(f"  backlog:    {human(dirty_bytes)} dirty in {len(dirty_rows)} chunk(s), "
                 f"uploading at {human(rate)}/s")
    lines.append(f"  remotes:    {remote_totals['objects']} objects, {human(remote_totals['stored_bytes'])} stored")
    lines.append(f"  so far:     {count.get('uploads', 0)} uploads ({human(count.get('uploaded_bytes', 0))}), "
                 f"{count.get('dedup_hits', 0)} deduplicated, {count.get('evictions', 0)} evictions, "
                 f"{count.get('fault_ins', 0)} fault-ins")
    lines.append(f"  zero-fuse:  {'running (pid %d)' % fuse_pid if fuse_pid else 'not running'}")
    if worker_pid:
        age = time.time() - worker_status.get("at", 0)
        lines.append(f"  zero-worker: running (pid {worker_pid}, last heartbeat {age:.0f}s ago)")
    else:
        lines.append("  zero-worker: not running (start it with: zero-worker %s)" % cache.root)
    if pins:
        lines.append("  pins:")
        for ino, path in pins:
            label = path.decode("utf-8", "surrogateescape") if path else f"(inode {ino}, unlinked)"
            logical, local = pinned_bytes[ino]
            lines.append(f"    {label}  {human(logical)}, {human(local)} in the cache")
    print("\n".join(lines))
    return 0


# --- pin / unpin ------------------------------------------------------------------------

def _pin_targets(paths) -> tuple[CacheDir, list[int]]:
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
    from zero.state import schema
    cache, inos = _pin_targets(args.paths)
    database = open_state(cache, config)
    with database.write() as connection:
        for ino in inos:
            if connection.execute(select(schema.pins.c.ino).where(schema.pins.c.ino == ino)).first() is None:
                connection.execute(insert(schema.pins).values(ino=ino, pinned_at=time.time()))
    database.dispose()
    _tell_worker(cache)
    print(f"Pinned {len(inos)} path(s); zero-worker brings them into the cache and keeps them there")
    return 0


def unpin(args, config) -> int:
    from zero.state import schema
    cache, inos = _pin_targets(args.paths)
    database = open_state(cache, config)
    with database.write() as connection:
        connection.execute(delete(schema.pins).where(schema.pins.c.ino.in_(inos)))
    database.dispose()
    _tell_worker(cache)
    print(f"Unpinned {len(inos)} path(s); their chunks may be evicted again")
    return 0


def _tell_worker(cache: CacheDir) -> None:
    wakeup.notify(cache.wake, "pins")
    wakeup.notify(cache.wake, wakeup.WORKER)
    if holder_pid(cache.lock_path("worker")) is None:
        print(f"note: zero-worker is not running; start it (zero-worker {cache.root}) for this to take effect",
              file=sys.stderr)


# --- sync ----------------------------------------------------------------------------------

def sync(args, config) -> int:
    from tqdm import tqdm

    from zero.state import chunks, requests
    cache, _ = find_cache(args.location)
    if holder_pid(cache.lock_path("worker")) is None:
        raise ZeroError(f"zero-worker is not running, so nothing can be uploaded; start it: zero-worker {cache.root}")
    database = open_state(cache, config)
    with database.write() as connection:
        waiting = {(row.ino, row.idx): row.version for row in chunks.all_rows(connection)
                   if row.state in ("dirty", "uploading")}
        for ino in {ino for ino, _ in waiting}:
            requests.request_upload(connection, ino)
    wakeup.notify(cache.wake, wakeup.WORKER)
    listener = wakeup.WakeListener(cache.wake, wakeup.FUSE)
    listener.start()
    deadline = time.monotonic() + args.timeout
    try:
        with tqdm(total=len(waiting), unit="chunk", desc="uploading", disable=not sys.stderr.isatty()) as bar:
            while waiting:
                generation = listener.generation
                with database.read() as connection:
                    for (ino, idx), version in list(waiting.items()):
                        row = chunks.get(connection, ino, idx)
                        if row is None or row.version != version or row.state not in ("dirty", "uploading"):
                            del waiting[(ino, idx)]
                            bar.update(1)
                if not waiting:
                    break
                if time.monotonic() > deadline:
                    raise ZeroError(f"{len(waiting)} chunk(s) were not uploaded within {args.timeout:g}s; "
                                    "see zero status and the zero-worker log")
                listener.wait(generation, 1.0)
    finally:
        listener.stop()
        database.dispose()
    print("Everything written before this command is stored in the remotes")
    return 0


# --- gc ----------------------------------------------------------------------------------------

def gc(args, config) -> int:
    from zero.worker.collector import Collector
    from zero.wiring import build_context

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="zero", description="Administer zero filesystems.")
    parser.add_argument("--config", help="config.yml (default: $ZERO_CONFIG or ~/.config/zero/config.yml)")
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("status", help="what is cached, dirty and uploaded; whether the worker runs")
    command.add_argument("location", help="the cache folder or the mountpoint")
    command.set_defaults(run=status)
    command = commands.add_parser("pin", help="keep files or trees in the cache (available offline)")
    command.add_argument("paths", nargs="+")
    command.set_defaults(run=pin)
    command = commands.add_parser("unpin", help="let pinned files be evicted again")
    command.add_argument("paths", nargs="+")
    command.set_defaults(run=unpin)
    command = commands.add_parser("sync", help="return once everything written so far is uploaded")
    command.add_argument("location", help="the mountpoint")
    command.add_argument("--timeout", type=float, default=3600.0, help="give up after this many seconds")
    command.set_defaults(run=sync)
    command = commands.add_parser("gc", help="delete remote objects nobody references (the worker does it every 10 minutes)")
    command.add_argument("location", help="the cache folder or the mountpoint")
    command.add_argument("--grace", type=float, help="seconds an object must be unused first (default: gcGracePeriod)")
    command.set_defaults(run=gc)
    args = parser.parse_args(argv)
    logsetup.configure("zero", "WARNING")
    try:
        config = config_module.load(args.config)
        return args.run(args, config)
    except ZeroError as error:
        print(f"zero: {error}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as error:
        print(f"zero: {error.filename or ''}: {error.strerror}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
