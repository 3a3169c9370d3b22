"""How much disk the cache really uses: recomputed from the chunk files'
allocated blocks, never a counter that could drift."""

from __future__ import annotations

from dataclasses import dataclass

from zero.cachedir import CacheDir
from zero.fsutil import disk_bytes


@dataclass
class CacheUsage:
    total_bytes: int
    files: int


def measure(cache: CacheDir) -> CacheUsage:
    total = 0
    files = 0
    for _ino, _idx, _path, st in cache.iter_chunk_files():
        total += disk_bytes(st)
        files += 1
    return CacheUsage(total_bytes=total, files=files)
