"""`zero reload <mount or cache>`: SIGHUP to the running zero-worker, then what it
said: which settings changed now and which wait for a restart."""

from __future__ import annotations

import os
import signal
import time

from zero.cli.common import find_cache, open_state
from zero.errors import ZeroError
from zero.locking import holder_pid
from zero.state.db import worker_status

ANSWER_TIMEOUT_S = 30.0
LOOK_EVERY_S = 0.1  # the heartbeat row has no event to wait on


def _published(cache, config) -> dict:
    database = open_state(cache, config)
    try:
        with database.read() as connection:
            return worker_status(connection)
    finally:
        database.dispose()


def reload(args, config) -> int:
    cache, _ = find_cache(args.location)
    pid = holder_pid(cache.lock_path("worker"))
    if pid is None:
        raise ZeroError(f"zero-worker is not running for {cache.root}; it reads the config when it starts")
    before = _published(cache, config).get("reloads", 0)
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    while time.monotonic() < deadline:
        status = _published(cache, config)
        if status.get("reloads", 0) > before:
            for message in status.get("reload_messages", []):
                print(message)
            return 0
        time.sleep(LOOK_EVERY_S)
    raise ZeroError(f"zero-worker (pid {pid}) did not answer within {ANSWER_TIMEOUT_S:.0f}s; see its log")
