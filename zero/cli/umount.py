"""`zero umount <mount>`: unmount (zero-fuse hands what is dirty to the worker
as it goes), then stop the worker, and say what is still not uploaded."""

from __future__ import annotations

import os
import select
import signal
from pathlib import Path

from zero.cachedir import CacheDir
from zero.cli.common import human, mounted_caches
from zero.cli.supervisor import fusermount, mount_ids
from zero.errors import ZeroError
from zero.locking import holder_pid

STOP_TIMEOUT_S = 600.0


def wait_exit(pid: int | None, timeout: float) -> bool:
    """Until process ``pid`` (not our child) has exited; True when it has."""
    if pid is None:
        return True
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


def describe_backlog(cache: CacheDir, config) -> str:
    """One sentence: is everything written uploaded?"""
    from zero.state import backlog
    from zero.state import db as state_db

    path = config.database_path(cache.root)
    if not path.exists():
        return "Nothing was written"
    database = state_db.open_database(path)
    try:
        with database.read() as connection:
            waiting = backlog.unuploaded(connection)
    finally:
        database.dispose()
    if not waiting:
        return "Everything written is uploaded"
    return (f"{human(cache.bytes_of(waiting))} of written data in {len(waiting)} chunk(s) is not uploaded yet; "
            f"it stays in {cache.root} and is uploaded when zero-worker next runs on it")


def umount(args, config) -> int:
    mountpoint = Path(args.mountpoint).expanduser().absolute()
    cache_root = mounted_caches().get(mountpoint)
    if cache_root is None:
        raise ZeroError(f"{mountpoint} is not a mounted zero filesystem")
    cache = CacheDir(cache_root)
    supervisor = holder_pid(cache.lock_path("mount"))
    fuse = holder_pid(cache.lock_path("fuse"))
    worker = holder_pid(cache.lock_path("worker"))
    reason = fusermount(mountpoint, lazy=args.lazy)
    if reason is not None and mount_ids(mountpoint):
        raise ZeroError(f"could not unmount {mountpoint}: {reason}. If it is busy, close what uses it "
                        f"(fuser -vm {mountpoint} lists it) or detach it now with: zero umount --lazy {mountpoint}")
    # zero-fuse exits once it has handed what is dirty to the worker; a
    # supervisor (zero mount) then stops the worker itself.
    if not wait_exit(fuse, args.timeout):
        raise ZeroError(f"zero-fuse (pid {fuse}) is still handing over writes after {args.timeout:.0f}s; "
                        "it goes on in the background")
    if supervisor is None and worker is not None:
        os.kill(worker, signal.SIGTERM)
    if not wait_exit(supervisor if supervisor is not None else worker, args.timeout):
        raise ZeroError(f"zero-worker did not stop within {args.timeout:.0f}s; it is finishing transfers")
    print(f"Unmounted {mountpoint} and stopped zero-worker. {describe_backlog(cache, config)}.")
    return 0
