#!/usr/bin/env python3
"""What zero's per-event state questions cost as the state grows: prefetch's
look-up after a reader, an fsync's "what is still owed", and the worker's
measure of the cache against a walk of every chunk file. Each is timed on a
scratch state of the size given, so a change that makes one of them grow with
the cache, a file or a promise shows here (benchmarks.md, "Twelfth pass").

    python bench/state_costs.py [--chunks 12800] [--others 200000] [--files 100000] [--base-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zero.cachedir import CacheDir  # noqa: E402
from zero.state import backlog, chunks  # noqa: E402
from zero.state.db import open_database, run_many  # noqa: E402
from zero.worker.usage import cache_usage  # noqa: E402

INSERT = ("INSERT INTO chunks (ino, idx, state, version, object_key, last_access, leased, stored_bytes, pinned)"
          " VALUES (?, ?, ?, 1, ?, 0, 0, 4096, 0)")


def timed(what: str, call, repeat: int = 1) -> None:
    started = time.perf_counter()
    for _ in range(repeat):
        call()
    print(f"{what}: {(time.perf_counter() - started) / repeat * 1000:.2f} ms", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=12_800, help="chunks of the one big file (12,800: 50 GiB)")
    parser.add_argument("--others", type=int, default=200_000, help="chunks of other files, one each")
    parser.add_argument("--files", type=int, default=100_000, help="chunk files for the walk against the measure")
    parser.add_argument("--base-dir", type=Path, default=None, help="where the scratch state goes (removed after)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="zero-state-costs-", dir=args.base_dir))
    try:
        database = open_database(work / "state.sqlite3", 4 << 20)
        big = 10
        with database.write() as connection:
            run_many(connection, INSERT, [(big, idx, "remote", "k") for idx in range(args.chunks)])
            run_many(connection, INSERT, [(100 + n, 0, "dirty", None) for n in range(args.others)])
        with database.read() as connection:
            timed(f"prefetch's look-up, 4 chunks of a file of {args.chunks:,} evicted",
                  lambda: chunks.remote_indexes(connection, big, range(5000, 5004)), repeat=50)
        with database.write() as connection:
            connection.exec_driver_sql("DELETE FROM chunks WHERE ino = ?", (big,))
            run_many(connection, INSERT, [(big, idx, "dirty", None) for idx in range(args.chunks)])
        with database.read() as connection:
            promised = backlog.unuploaded_versions(connection, big)
            timed(f"what an fsync still waits for, {len(promised):,} chunks ({args.others:,} others not uploaded)",
                  lambda: backlog.still_unuploaded(connection, promised))
        cache = CacheDir(work / "cache")
        with database.write() as connection:
            connection.exec_driver_sql("DELETE FROM chunks")
            run_many(connection, INSERT, [(100 + n, 0, "clean", "k") for n in range(args.files)])
        for n in range(args.files):
            path = cache.chunk_path(100 + n, 0)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as out:
                out.write(b"x" * 100)
        timed(f"a walk of {args.files:,} chunk files", cache.usage)
        with database.read() as connection:
            timed(f"the worker's measure of {args.files:,} clean chunks", lambda: cache_usage(connection, cache))
        database.dispose()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
