"""Fault evicted chunks back in when zero-fuse asks (and for prefetch, pins
and priming): download, verify, write a temporary file, then rename it into
place inside the transaction that marks the chunk clean, so a chunk deleted
meanwhile never gets a stray file.

The file is not synced (decision 76): the chunk is clean, so the remote
holds it; after a power cut zero.meta.reboot drops recently written clean
files, which are fetched again, and a write that turns a clean chunk dirty
syncs its file first (zero.fuse.leases).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time

from zero.fsutil import settled_bytes
from zero.errors import ObjectCorrupt, ObjectMissing, RemoteUnavailable, StateConflict
from zero.state import chunks, counters, namespace, objects, quarantine, requests
from zero import crashpoints
from zero.worker.context import WorkerContext

log = logging.getLogger(__name__)

FETCH_THREADS = 6  # downloads, verifies and writes overlap; a reader may use any of them
FOR_A_READER = frozenset({requests.READER, requests.PREFETCH})  # kept from eviction until read (zero.worker.unread)
NEVER_UPLOADED = ("its last change was never uploaded: the metadata it was restored from was backed up before "
                  "that upload, and the machine that wrote it was lost")


class Fetcher:
    def __init__(self, context: WorkerContext, still_ours=lambda names: set(names),
                 copies_read=lambda key, verdicts: None):
        self.context = context
        # Which holders still carry their marker (RemoteKeeper.still_ours).
        self.still_ours = still_ours
        # Told which copies a fault-in read: remote -> None if good, else the ObjectCorrupt or
        # ObjectMissing (Scrubber.judge quarantines the bad ones, lifts good ones).
        self.copies_read = copies_read
        self.fetched_bytes = 0
        self.block = cache_block(context.cache.root)

    def pending(self, limit: int = 32) -> list:
        with self.context.database.read() as connection:
            return requests.pending_fetches(connection, limit)

    def fetch(self, ino: int, idx: int, priority: int = requests.READER) -> None:
        """Serve one request; failures that retrying cannot fix are written
        back for the waiting reader, which then gets EIO. What a reader or its
        read-ahead asked for is kept from eviction until read (zero.worker.unread)."""
        context = self.context
        try:
            with context.database.write() as connection:
                row = chunks.get(connection, ino, idx)
                if row is None or not chunks.is_fetchable(row):
                    requests.done_fetch(connection, ino, idx)  # deleted, or local already
                    return
                if row.object_key is None:  # restored from a backup made before its upload
                    requests.fail_fetch(connection, ino, idx, NEVER_UPLOADED)
                else:
                    chunks.start_fetch(connection, ino, idx)
                    holders = objects.remotes_holding(connection, row.object_key)
                    suspect = quarantine.bad_remotes(connection, row.object_key)
        except StateConflict:
            return
        if row.object_key is None:
            log.error("%s was changed on the machine that wrote it and not uploaded before that machine was "
                      "lost, so its bytes exist nowhere; reads of them fail with EIO (`zero fsck --repair "
                      "--accept-loss` makes them a hole)", self._describe(ino, idx))
            context.wake_fuse()
            return
        crashpoints.crash("fetch.started")
        key = row.object_key
        tmp = os.path.join(context.cache.tmp, f"{ino}-{idx}.fetch")
        verdicts: dict[str, Exception | None] = {}
        try:
            # Quarantined copies are read last: one may have been put back by hand.
            data = context.pool.get(context.remote_key(key), holders,
                                    decode=lambda blob: context.codec.open(blob, expected_key=key), suspect=suspect,
                                    on_copy=verdicts.__setitem__)
            self._write_tmp(tmp, data)
            crashpoints.crash("fetch.downloaded")
            path = context.cache.chunk_path(ino, idx)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with context.database.write() as connection:
                # Priming guesses: its fetch keeps the chunk's last use, unless someone asked for it
                # meanwhile. Stamped now, a primed chunk of an old file outlived newer chunks evicted
                # after it. A reader, a pin or `zero warmup` asks for use soon: stamped now, or the
                # warmup's own later fetches evicted its first ones (decision 109).
                wanted_now = requests.priority_of(connection, ino, idx)
                asked = priority if wanted_now is None else min(priority, wanted_now)
                for_a_reader = asked in FOR_A_READER
                fetched_at = row.last_access if asked == requests.PRIME else time.time()
                chunks.finish_fetch(connection, ino, idx, settled_bytes(os.stat(tmp), self.block), fetched_at)
                os.rename(tmp, path)
                crashpoints.crash("fetch.renamed")
                requests.done_fetch(connection, ino, idx)
                counters.bump(connection, "fault_ins")
            if for_a_reader:
                context.unread.fetched(ino, idx, fetched_at)
            # No fsync of the folder: a rename that a power cut loses leaves a clean
            # row without its file, which worker recovery completes as an eviction.
            self.fetched_bytes += len(data)
        except (ObjectMissing, ObjectCorrupt) as error:
            away = set(holders) - self.still_ours(holders)
            if away:
                # An unmounted drive leaves an empty folder, a swapped bucket another's
                # objects: the object looks missing, but the data is on the remote that is
                # away, not lost. The reader waits (EIO after faultInTimeout); the keeper
                # logged the remote's health once.
                self._give_back(ino, idx, tmp, error=None)
                raise RemoteUnavailable(f"remote(s) {', '.join(sorted(away))} holding chunk {idx} of inode "
                                        f"{ino} are unavailable") from error
            # Name the file, the byte range and where the object lives, so a person can restore it.
            log.error("%s cannot be read back from remote(s) %s (object %s): %s; reads of those bytes fail "
                      "with EIO until a good copy is put back there", self._describe(ino, idx),
                      ", ".join(holders) or "(none)", context.remote_key(key), error)
            self._give_back(ino, idx, tmp, error=str(error))
        except RemoteUnavailable as error:
            log.debug("Fault-in of chunk %d of inode %d postponed: %s", idx, ino, error)  # the pool logs the remote's health once
            self._give_back(ino, idx, tmp, error=None)
            raise
        except StateConflict:
            _remove(tmp)  # truncated or deleted while we downloaded
        except BaseException:
            self._give_back(ino, idx, tmp, error=None)
            raise
        finally:
            context.wake_fuse()
            if any(verdicts.values()) or set(verdicts) & suspect:
                self.copies_read(key, verdicts)

    def _describe(self, ino: int, idx: int) -> str:
        start = idx * self.context.chunk_size
        with self.context.database.read() as connection:
            path = namespace.path_of(connection, ino)
        name = path.decode("utf-8", "surrogateescape") if path else "an unlinked file"
        return f"Chunk {idx} (bytes {start}-{start + self.context.chunk_size - 1}) of {name} (inode {ino})"

    def _write_tmp(self, tmp: str, data: bytes) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)

    def _give_back(self, ino: int, idx: int, tmp: str, error: str | None) -> None:
        _remove(tmp)
        with self.context.database.write() as connection:
            try:
                chunks.abort_fetch(connection, ino, idx)
                # Remote again: no file may stay. One is there if the rename went through and
                # its commit did not (a full disk): the cache's measure (decision 111) would not
                # count it until the worker's restart removed it.
                _remove(self.context.cache.chunk_path(ino, idx))
            except StateConflict:
                pass
            if error is not None:
                requests.fail_fetch(connection, ino, idx, error)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def cache_block(cache_root) -> int:
    """The cache file system's allocation unit: a fetched file takes whole ones
    (ext4's bigalloc and 64 KiB pages allocate more than 4 KiB at a time)."""
    return max(4096, os.statvfs(cache_root).f_frsize)


def fetch_cache_bytes(plain_bytes: int | None, chunk_size: int, block: int) -> int:
    """The disk a fetch will take: its object's plain size in whole blocks, a
    whole chunk when the chunk names no object. Counting every fetch as a whole
    chunk made a tree of small files evict the cache down to nothing, the chunk
    a reader had just waited for too, until the read gave up (decision 82)."""
    if plain_bytes is None:
        return chunk_size
    return -(-plain_bytes // block) * block


class FetchDispatcher:
    """Keeps up to FETCH_THREADS fetches in flight and starts the next request the
    moment one finishes, rather than in rounds that wait for their slowest fetch
    (a sequential reader was starved between rounds). Lower priorities (prefetch,
    pins, priming) leave one thread free, so a reader never queues behind them."""

    def __init__(self, fetcher: Fetcher, make_room, threads: int = FETCH_THREADS):
        self.fetcher = fetcher
        self.make_room = make_room  # evict before fault-ins, so they do not push the cache over its target
        self.threads = threads
        self.wanted = threading.Event()  # a request arrived or a fetch finished: look again
        self.block = cache_block(fetcher.context.cache.root)

    def run(self, stopping: threading.Event, listener, idle_s: float, retry_s: float) -> None:
        listener.also_set(self.wanted)
        in_flight: dict[tuple[int, int], tuple[int, int, concurrent.futures.Future]] = {}
        with concurrent.futures.ThreadPoolExecutor(self.threads, thread_name_prefix="zero-fetch") as pool:
            while not stopping.is_set():
                self.wanted.clear()
                if self._reap(in_flight):
                    listener.wait(listener.generation, retry_s)
                    continue
                started = self._start(pool, in_flight)
                if not started:
                    self.wanted.wait(idle_s)
            for _priority, _bytes, future in in_flight.values():
                future.cancel()

    def _reap(self, in_flight) -> bool:
        """Forget finished fetches; True if a remote was unavailable (try later)."""
        unavailable = False
        for key, (_priority, _bytes, future) in list(in_flight.items()):
            if future.done():
                del in_flight[key]
                try:
                    future.result()
                except RemoteUnavailable:
                    unavailable = True
        return unavailable

    def _start(self, pool, in_flight) -> int:
        free = self.threads - len(in_flight)
        if free <= 0:
            return 0
        low = sum(1 for priority, _bytes, _future in in_flight.values() if priority > requests.READER)
        chosen = []
        for row in self.fetcher.pending(limit=len(in_flight) + 2 * self.threads):
            if len(chosen) == free:
                break
            if (row.ino, row.idx) in in_flight:
                continue
            if row.priority > requests.READER:
                if low >= self.threads - 1:
                    continue
                low += 1
            chosen.append(row)
        if not chosen:
            return 0
        sizes = [self._cache_bytes(row) for row in chosen]
        self.make_room(sum(sizes), in_flight_bytes=sum(size for _, size, _ in in_flight.values()))
        for row, size in zip(chosen, sizes):
            future = pool.submit(self.fetcher.fetch, row.ino, row.idx, row.priority)
            future.add_done_callback(lambda _future: self.wanted.set())
            in_flight[(row.ino, row.idx)] = (row.priority, size, future)
        return len(chosen)

    def _cache_bytes(self, row) -> int:
        return fetch_cache_bytes(row.plain_bytes, self.fetcher.context.chunk_size, self.block)
