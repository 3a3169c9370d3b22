"""zero-worker <cache>: upload, evict, fault in and collect for one cache."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from zero import config as config_module
from zero import fsutil, logsetup, memory, wakeup
from zero.cachedir import CacheDir, require_private
from zero.errors import ZeroError
from zero.locking import PidLock
from zero.wiring import build_context
from zero.worker import reload as reloader

log = logging.getLogger("zero.worker")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="zero-worker", description="Move a zero cache's data to and from the remotes.")
    parser.add_argument("cache", help="the cache folder zero-fuse uses")
    parser.add_argument("--config", help="config.yml (default: $ZERO_CONFIG or ~/.config/zero/config.yml)")
    parser.add_argument("--force", action="store_true",
                        help="take the filesystem over from a writer that did not stop cleanly and whose heartbeat "
                             "is older than writerTimeout (a dead machine); a live writer is never taken over")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    fsutil.keep_private()
    memory.keep_big_buffers()
    logsetup.configure("zero-worker")
    try:
        return run(args)
    except ZeroError as error:
        log.error("%s", error)
        print(f"zero-worker: {error}", file=sys.stderr)
        return 1


def run(args) -> int:
    from zero.worker.recovery import recover
    from zero.meta.keyring import ensure_published
    from zero.meta.writer import Writer
    from zero.worker.remotes import RemoteKeeper
    from zero.worker.service import Worker

    config = config_module.load(args.config)
    logging.getLogger().setLevel(config.log_level)
    cache = CacheDir(args.cache)
    cache.prepare()
    require_private(config.database_path(cache.root), "the state database",
                    "the filesystem's keys and every file name")
    lock = PidLock(cache.lock_path("worker"), "zero-worker")
    lock.acquire()
    stop, reload_asked, woken = threading.Event(), threading.Event(), threading.Event()
    for signum, event in ((signal.SIGTERM, stop), (signal.SIGINT, stop), (signal.SIGHUP, reload_asked)):
        signal.signal(signum, lambda *_, event=event: (event.set(), woken.set()))
    from prometheus_client import CollectorRegistry

    from zero.worker.remote_metrics import RemoteMetrics

    registry = CollectorRegistry()
    context = build_context(config, cache, wrap=RemoteMetrics(registry).wrap)
    listener = wakeup.WakeListener(cache.wake, wakeup.WORKER)
    try:
        recover(context)
        keeper = RemoteKeeper(context)
        keeper.start()  # refuses a config that strands data; marks each remote's health
        usable = lambda: [remote for remote in context.pool.remotes  # noqa: E731 - ours and answering, now
                          if remote.name in context.pool.durable_names()]
        writer = Writer(context.database, context.fs_id, cache.root, config.writer_timeout_s, usable,
                        configured=lambda: [remote.name for remote in context.pool.remotes])
        context.writer = writer
        # The keys, sealed, in every remote that is ours and answering (never into a stranger), by the writer only.
        writer.on_writer = lambda: ensure_published(context.database, usable(), config)
        writer.on_change = lambda: (context.wake_fuse(), listener.poke())  # the uploader may go, or must stop
        writer.start(force=args.force)  # NotTheWriter when another machine holds the lease
        listener.start()
        names = ", ".join(f"{remote.name} ({remote!r})" for remote in context.pool.remotes)
        log.info("Worker started for %s: remotes %s; keeping the cache under %d MiB", cache.root, names,
                 config.target_disk_usage_bytes >> 20)
        worker = Worker(context, listener, keeper)
        metrics = start_metrics(context, worker, registry)
        worker.published["settings"] = reloader.settings(context.config)
        memory.fewer_gc_passes()
        worker.start()
        while not stop.is_set():
            woken.wait()
            woken.clear()
            if reload_asked.is_set():
                reload_asked.clear()
                apply_reload(context, worker, args.config)
        log.info("Stopping: finishing the uploads and fault-ins under way")
        worker.stop()
        metrics.stop()
        writer.release()  # after the last metadata segment: the lease names it
    finally:
        listener.stop()
        context.database.dispose()
        lock.release()
    log.info("Worker stopped cleanly")
    return 0


def apply_reload(context, worker, path) -> None:
    """SIGHUP: the settings that can change live change now; the log says which others wait for a restart."""
    context.config, messages = reloader.reload(context.config, path)
    for message in messages:
        log.info("%s", message)
    worker.published["settings"] = reloader.settings(context.config)
    worker.published["reloads"] = worker.published.get("reloads", 0) + 1
    worker.published["reload_messages"] = messages
    worker.heartbeat()
    worker.listener.poke()  # a smaller target: evict now


def start_metrics(context, worker, registry):
    from zero.worker.metrics import Metrics, parse_address

    metrics = Metrics(context, registry)
    address = parse_address(context.config.metrics_address)
    if address is not None:
        metrics.start(address)
    worker.published["metrics_address"] = context.config.metrics_address if metrics.listening else ""
    return metrics


if __name__ == "__main__":
    sys.exit(main())
