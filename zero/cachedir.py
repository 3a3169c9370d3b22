"""The cache folder's layout, shared by zero-fuse, zero-worker and the CLI.

    <cache>/chunks/<ino % 256 as 2 hex>/<ino>-<idx>   chunk contents
    <cache>/tmp/                                      fault-ins in progress
    <cache>/wake/                                     cross-process wake-ups
    <cache>/fuse.lock, <cache>/worker.lock            one process of each kind
    <cache>/collect.lock                              one garbage collection at a time (zero.worker.collector)
    <cache>/clock                                     touched to read the file system's clock (file_clock_ns)
    <cache>/state.sqlite3                             the state (unless sqliteFileLocation)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from zero.errors import MountError
from zero.fsutil import disk_bytes, others_can_access

COARSE_TICK_NS = 20_000_000  # how far the kernel's file times may lag time.time(): a jiffy, at HZ 100 10 ms


def require_private(path: Path, what: str, holds: str) -> None:
    """Refuse to go on when other users of this machine can access ``path``."""
    if path.exists() and others_can_access(path):
        mode = path.stat().st_mode & 0o777
        fix = "chmod 700" if path.is_dir() else "chmod 600"
        raise MountError(f"{what} {path} is open to other users of this machine (mode {mode:03o}), and it holds "
                         f"{holds}; make it private with: {fix} {path}")


class CacheDir:
    def __init__(self, root: Path | str):
        self.root = Path(root).resolve()
        self.chunks = self.root / "chunks"
        self.tmp = self.root / "tmp"
        self.wake = self.root / "wake"

    def prepare(self) -> None:
        """Create the folders (owner-only); fail with a sentence if the cache is not
        writable, or if other users can look into it: it holds the filesystem's keys,
        every file name and the cached data."""
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            for folder in (self.chunks, self.tmp, self.wake):
                folder.mkdir(exist_ok=True)
            for bucket in range(256):  # chunk files are spread by inode (chunk_dir)
                os.makedirs(f"{self.chunks}/{bucket:02x}", exist_ok=True)
        except OSError as error:
            raise MountError(f"cannot create the cache folder {self.root}: {error.strerror}; "
                             "choose a folder you can write to") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise MountError(f"the cache folder {self.root} is not writable; fix its permissions "
                             f"(chmod u+w {self.root}) or choose another folder")
        require_private(self.root, "the cache folder", "this filesystem's keys, every file name and the cached data")

    def chunk_path(self, ino: int, idx: int) -> str:
        return f"{self.chunks}/{ino % 256:02x}/{ino}-{idx}"

    def chunk_dir(self, ino: int) -> str:
        return f"{self.chunks}/{ino % 256:02x}"

    def lock_path(self, role: str) -> Path:
        return self.root / f"{role}.lock"

    def file_clock_ns(self) -> int:
        """Now, on the clock this file system stamps mtimes with: the kernel's
        coarse clock, which may lag time.time() by a tick. A marker is touched
        and its mtime read."""
        marker = self.root / "clock"
        try:
            try:
                os.utime(marker)
            except FileNotFoundError:
                os.close(os.open(marker, os.O_WRONLY | os.O_CREAT, 0o600))
            return os.stat(marker).st_mtime_ns
        except OSError:  # a full disk (no inode for the marker): a tick early counts a little more as new
            return time.time_ns() - COARSE_TICK_NS

    def iter_chunk_files(self):
        """(ino, idx, path, stat) for every chunk file on disk."""
        if not self.chunks.exists():
            return
        for bucket in os.scandir(self.chunks):
            if not bucket.is_dir():
                continue
            for entry in os.scandir(bucket.path):
                name = entry.name
                ino_text, _, idx_text = name.partition("-")
                if not (ino_text.isdigit() and idx_text.isdigit()):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                yield int(ino_text), int(idx_text), entry.path, st

    def usage(self) -> "CacheUsage":
        """How much disk the chunk files really use: recomputed from their
        allocated blocks, never a counter that could drift."""
        total = files = 0
        for _ino, _idx, _path, st in self.iter_chunk_files():
            total += disk_bytes(st)
            files += 1
        return CacheUsage(total_bytes=total, files=files)

    def bytes_of(self, chunk_ids) -> int:
        """Disk bytes the given (ino, idx) chunks' files use (dirty data, say)."""
        total = 0
        for ino, idx in chunk_ids:
            try:
                total += disk_bytes(os.stat(self.chunk_path(ino, idx)))
            except FileNotFoundError:
                pass
        return total


@dataclass
class CacheUsage:
    total_bytes: int
    files: int

