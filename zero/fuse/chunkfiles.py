"""One open descriptor per chunk, shared by every handle of every file.

A descriptor may outlive its path: the worker evicts a clean chunk by
unlinking it. Reading through such a descriptor is still correct (same
bytes as the remote copy); writing through it would lose the write. So the
writer re-checks the link count when it takes a chunk's write lease and
replaces the shared descriptor, and readers pick up the new one.

Descriptors are reference-counted: a replaced or trimmed descriptor is
closed only after its last reader finishes, so a number is never reused
under a thread that is still reading it.

The files of a deleted inode are unlinked by a thread, after the commit that
deleted its rows: unlinking costs a millisecond and more on a busy disk, and
rm -r should not wait for it. Inode numbers are never reused, so no new file
can appear at those paths; a crash before the thread gets to them leaves
files without rows, which the mount-time reconciler deletes.
"""

from __future__ import annotations

import collections
import os
import queue
import threading

from zero.cachedir import CacheDir


class ChunkFile:
    __slots__ = ("fd", "users", "retired")

    def __init__(self, fd: int):
        self.fd = fd
        self.users = 0
        self.retired = False


class ChunkFiles:
    def __init__(self, cache: CacheDir, max_open: int = 1024):
        self.cache = cache
        self.max_open = max_open
        self._lock = threading.Lock()
        self._files: collections.OrderedDict[tuple[int, int], ChunkFile] = collections.OrderedDict()
        self._doomed: queue.Queue[tuple[int, list[int]] | None] = queue.Queue()
        self._unlinker: threading.Thread | None = None

    def start(self) -> None:
        self._unlinker = threading.Thread(target=self._unlink_doomed, name="zero-unlinker", daemon=True)
        self._unlinker.start()

    def stop(self) -> None:
        """Unlink what is queued, then end the thread."""
        if self._unlinker is not None:
            self._doomed.put(None)
            self._unlinker.join()
            self._unlinker = None

    def acquire(self, ino: int, idx: int) -> ChunkFile | None:
        """The shared descriptor for a chunk, opening its file if needed;
        None when the chunk has no cache file. Pair with release()."""
        key = (ino, idx)
        with self._lock:
            chunk_file = self._files.get(key)
            if chunk_file is not None:
                self._files.move_to_end(key)
                chunk_file.users += 1
                return chunk_file
        try:
            fd = os.open(self.cache.chunk_path(ino, idx), os.O_RDWR)
        except FileNotFoundError:
            return None
        return self._install(key, fd)

    def reopen(self, ino: int, idx: int) -> ChunkFile:
        """Replace the shared descriptor with one on the file now at the path,
        creating it if missing. Only the write-lease holder calls this."""
        fd = os.open(self.cache.chunk_path(ino, idx), os.O_RDWR | os.O_CREAT, 0o600)
        return self._install((ino, idx), fd, replace=True)

    def _install(self, key: tuple[int, int], fd: int, replace: bool = False) -> ChunkFile:
        to_close: list[int] = []
        with self._lock:
            existing = self._files.get(key)
            if existing is not None and not replace:
                # Another thread opened it first: use theirs, drop ours.
                existing.users += 1
                self._files.move_to_end(key)
                to_close.append(fd)
                chunk_file = existing
            else:
                if existing is not None:
                    self._retire(existing, to_close)
                chunk_file = ChunkFile(fd)
                chunk_file.users = 1
                self._files[key] = chunk_file
                while len(self._files) > self.max_open:
                    _, oldest = self._files.popitem(last=False)
                    self._retire(oldest, to_close)
        for stale in to_close:
            os.close(stale)
        return chunk_file

    @staticmethod
    def _retire(chunk_file: ChunkFile, to_close: list[int]) -> None:
        chunk_file.retired = True
        if chunk_file.users == 0:
            to_close.append(chunk_file.fd)

    def release(self, chunk_file: ChunkFile) -> None:
        close = False
        with self._lock:
            chunk_file.users -= 1
            close = chunk_file.retired and chunk_file.users == 0
        if close:
            os.close(chunk_file.fd)

    def forget(self, ino: int, indexes) -> None:
        """Drop descriptors of chunks whose files are being deleted."""
        to_close: list[int] = []
        with self._lock:
            for idx in indexes:
                chunk_file = self._files.pop((ino, idx), None)
                if chunk_file is not None:
                    self._retire(chunk_file, to_close)
        for fd in to_close:
            os.close(fd)

    def delete(self, ino: int, indexes) -> None:
        """Delete chunk files whose rows are gone (unlink, truncate), descriptors first."""
        self.forget(ino, indexes)
        for idx in indexes:
            try:
                os.unlink(self.cache.chunk_path(ino, idx))
            except FileNotFoundError:
                pass

    def delete_later(self, ino: int, indexes) -> None:
        """As delete(), for an inode whose rows are gone for good: the descriptors
        go now, the files soon, on the unlinker thread."""
        indexes = list(indexes)
        self.forget(ino, indexes)
        if self._unlinker is None:
            self.delete(ino, indexes)
        elif indexes:
            self._doomed.put((ino, indexes))

    def settle(self) -> None:
        """Wait until every queued file is unlinked (to measure free space)."""
        self._doomed.join()

    def _unlink_doomed(self) -> None:
        while True:
            item = self._doomed.get()
            try:
                if item is None:
                    return
                self.delete(*item)
            except OSError:
                pass  # the reconciler deletes files without rows at the next mount
            finally:
                self._doomed.task_done()

    def drop_unlinked(self) -> int:
        """Close descriptors whose files the worker evicted: an open descriptor
        keeps the disk space of an unlinked file, so eviction frees nothing
        until zero-fuse lets go. Returns how many were dropped."""
        to_close: list[int] = []
        with self._lock:
            for key, chunk_file in list(self._files.items()):
                try:
                    linked = os.fstat(chunk_file.fd).st_nlink > 0
                except OSError:
                    linked = False
                if not linked:
                    del self._files[key]
                    self._retire(chunk_file, to_close)
        for fd in to_close:
            os.close(fd)
        return len(to_close)

    def cached_indexes(self, ino: int) -> list[int]:
        with self._lock:
            return [idx for (i, idx) in self._files if i == ino]

    def close_all(self) -> None:
        with self._lock:
            files = list(self._files.values())
            self._files.clear()
        for chunk_file in files:
            chunk_file.retired = True
            if chunk_file.users == 0:
                os.close(chunk_file.fd)
