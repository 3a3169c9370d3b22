"""zero-fuse <mount> <cache>: serve the filesystem from the local cache."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from zero import config as config_module
from zero import fsutil, logsetup, memory, wakeup
from zero.cachedir import CacheDir, require_private
from zero.errors import NotTheWriter, ZeroError
from zero.meta import writer as writer_lease
from zero.locking import PidLock

log = logging.getLogger("zero.fuse")
FUSE_THREADS = 16  # libfuse's worker threads: requests answered at once
MALLOC_ARENAS = 1  # shared by all its threads: less memory, no slower (zero/memory.py few_arenas)


def parse_args(argv):
    from zero.fuse import mountpoint

    parser = argparse.ArgumentParser(prog="zero-fuse", description="Mount a zero filesystem.")
    parser.add_argument("mountpoint", help="an existing empty directory to mount on")
    parser.add_argument("cache", help="the cache folder (created if missing)")
    parser.add_argument("--config", help="config.yml (default: $ZERO_CONFIG or ~/.config/zero/config.yml)")
    parser.add_argument("--allow-non-empty", action="store_true", help="mount over a non-empty directory")
    parser.add_argument("--debug", action="store_true", help="log every FUSE request")
    parser.add_argument("-o", dest="options", action="append", default=[], metavar="OPTION[,OPTION...]",
                        help="mount options: " + ", ".join(sorted(mountpoint.MOUNT_OPTIONS)))
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    fsutil.keep_private()
    memory.keep_big_buffers()
    memory.few_arenas(MALLOC_ARENAS)
    logsetup.configure("zero-fuse")
    try:
        return run(args)
    except ZeroError as error:
        # The log goes to stderr too: say it once, as a plain sentence.
        print(f"zero-fuse: {error}", file=sys.stderr)
        return 1


def run(args) -> int:
    from zero.fuse import mountpoint

    config = config_module.load(args.config)
    logging.getLogger().setLevel("DEBUG" if args.debug else config.log_level)
    mount = Path(args.mountpoint).expanduser().absolute()
    # Before loading libfuse: finding the library needs a working /dev, and
    # "no /dev/fuse" is the cause a person can act on.
    mountpoint.check_fuse_available()
    # Imported here so that a missing libfuse 3 is reported as a ZeroError above.
    from zero.fuse import binding, recovery
    from zero.fuse.worker_link import WorkerLink
    from zero.fuse.adapter import ZeroOperations
    from zero.fuse.opstats import OpStats
    from zero.state import db as state_db

    mountpoint.check_mountpoint(mount, args.allow_non_empty)
    # As the kernel will list it in /proc/self/mountinfo (a symlink resolved); once
    # mounted, resolving it would ask zero-fuse itself, which answers only after INIT.
    mount = Path(os.path.realpath(mount))
    cache = CacheDir(args.cache)
    cache.prepare()
    require_private(config.database_path(cache.root), "the state database",
                    "the filesystem's keys and every file name")
    lock = PidLock(cache.lock_path("fuse"), "zero-fuse")
    lock.acquire()
    database = state_db.open_database(config.database_path(cache.root), config.chunk_size_bytes,
                                      root_uid=os.getuid(), root_gid=os.getgid())
    settings = state_db.format_settings(database)
    chunk_size = int(settings["chunk_size"])
    if chunk_size != config.chunk_size_bytes:
        log.info("This cache was formatted with %d KiB chunks; chunkSize in the config applies to new caches only",
                 chunk_size // 1024)
    recovery.reconcile(database, cache, chunk_size)
    listener = wakeup.WakeListener(cache.wake, wakeup.FUSE)
    listener.start()
    op_stats = OpStats(database)
    worker = WorkerLink(database, cache, listener, config.fault_in_timeout_s, on_fault_in=op_stats.waited_for_fault_in)
    asked = mountpoint.parse_mount_options(args.options)
    try:
        if writer_lease.is_read_only(database):
            log.info("This cache is a read-only restore point (zero restore --at): mounting it read-only")
            asked["ro"] = True
        elif not asked.get("ro"):
            refuse_if_not_the_writer(database, worker, listener, config.fault_in_timeout_s)
    except ZeroError:
        listener.stop()
        database.dispose()
        lock.release()
        raise
    operations = ZeroOperations(database, cache, config, worker, chunk_size, op_stats, mountpoint=str(mount))
    if worker.worker_pid() is None:
        log.warning("zero-worker is not running for %s: nothing is uploaded and evicted chunks cannot be read "
                    "until it runs (zero-worker %s)", cache.root, cache.root)
    log.info("Mounting %s (cache %s, libfuse %d.%d from %s)", mount, cache.root, *binding.LIBRARY_VERSION,
             binding.LIBRARY_PATH)
    # Idle threads are kept, never ended: each holds its Python thread state (binding.ZeroFUSE).
    options = dict(foreground=True, nothreads=False, fsname=f"zero:{cache.root}", subtype="zero",
                   max_threads=FUSE_THREADS, max_idle_threads=FUSE_THREADS, default_permissions=True, debug=args.debug)
    if os.getuid() == 0:
        options["allow_other"] = True
    options.update(asked)
    if options.get("ro"):
        log.info("Mounting read-only: writes fail with 'Read-only file system'")
    op_stats.start()
    memory.fewer_gc_passes()
    try:
        binding.ZeroFUSE(operations, str(mount), **options)
    except RuntimeError as error:
        if not operations.started:
            raise ZeroError(f"libfuse could not mount {mount} ({error}); see the messages above") from None
        log.info("Stopped by a signal; unmounting")  # libfuse reports a signal stop as an error code
    finally:
        operations.shutdown()
        op_stats.stop()
        listener.stop()
        database.dispose()
        lock.release()
    log.info("Unmounted %s cleanly", mount)
    return 0


def refuse_if_not_the_writer(database, worker, listener, timeout_s: float) -> None:
    """A cache whose worker found another machine writing the filesystem is not
    mounted read-write: what would be written there could never be uploaded.
    A worker that is starting gets until ``timeout_s`` to decide; without a
    worker, its last decision stands."""
    def decided():
        if worker.worker_pid() is not None:
            return worker.running_verdict()  # None: that worker has not checked the lease yet
        return writer_lease.read_verdict(database) or {}

    try:
        verdict = wakeup.wait_for(listener, decided, timeout_s, lambda: TimeoutError())
    except TimeoutError:
        log.info("zero-worker has not checked the writer lease yet; mounting, and it uploads only once it holds it")
        return
    if verdict.get("role") in (writer_lease.REFUSED, writer_lease.FENCED):
        raise NotTheWriter(f"not mounted: zero-worker found that {verdict['message']}. To read this cache's "
                           f"files meanwhile, mount it read-only (-o ro)")


if __name__ == "__main__":
    sys.exit(main())
