"""`zero sync`: return once everything written so far is in the remotes."""

from __future__ import annotations

from zero import wakeup
from zero.cli.common import find_cache, open_state
from zero.cli.progress import bar as progress_bar
from zero.errors import ZeroError
from zero.locking import holder_pid
from zero.state import backlog, requests


def sync(args, config) -> int:
    cache, _ = find_cache(args.location)
    if holder_pid(cache.lock_path("worker")) is None:
        raise ZeroError(f"zero-worker is not running, so nothing can be uploaded; start it: zero-worker {cache.root}")
    database = open_state(cache, config)
    listener = wakeup.WakeListener(cache.wake, wakeup.FUSE)
    listener.start()
    try:
        with database.write() as connection:
            waiting = backlog.unuploaded_versions(connection)
            for ino in {ino for ino, _ in waiting}:
                requests.request_upload(connection, ino)
        wakeup.notify(cache.wake, wakeup.WORKER)
        with progress_bar(total=len(waiting), unit="chunk", desc="uploading") as bar:
            left = len(waiting)

            def uploaded():
                nonlocal left, waiting
                with database.read() as connection:
                    waiting = backlog.still_unuploaded(connection, waiting)
                bar.update(left - len(waiting))
                left = len(waiting)
                return None if waiting else True

            wakeup.wait_for(listener, uploaded, args.timeout, lambda: ZeroError(
                f"{left} chunk(s) were not uploaded within {args.timeout:g}s; see zero status and the "
                "zero-worker log"))
    finally:
        listener.stop()
        database.dispose()
    print("Everything written before this command is stored in the remotes")
    return 0
