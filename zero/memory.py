"""How zero-fuse and zero-worker use memory: big buffers stay in the process,
and the cyclic garbage collector runs less often.

glibc serves an allocation of 128 KiB or more with a fresh mmap and unmaps it
when freed; what is freed at the top of a heap it trims. Every 4 MiB chunk
then arrives in new pages that the kernel must fault in and zero, four or five
times per chunk uploaded (the read, the compressed copy, the ciphertext, the
blob). Measured on 64 chunks of 4 MiB (read, hash, compress, encrypt, write):
1.18 s of system CPU with glibc's defaults, 0.12 s with these settings, and
the upload ran 2-3x faster. The memory stays with the process while it is
busy; release_free() gives it back once the worker goes idle.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's upper limit on 64-bit systems
TRIM_THRESHOLD_BYTES = 256 * 1024 * 1024


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not hasattr(libc, "mallopt") or not hasattr(libc, "malloc_trim"):
        return None  # not glibc (musl, say): its allocator is left as it is
    return libc


_LIBC = _libc()


def keep_big_buffers() -> bool:
    """Tune the allocator for chunk-sized buffers; False where it is not glibc."""
    if _LIBC is None:
        return False
    ok = _LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and _LIBC.mallopt(M_TRIM_THRESHOLD,
                                                                                  TRIM_THRESHOLD_BYTES)
    if not ok:
        log.debug("glibc refused the allocator settings; keeping its defaults")
    return bool(ok)


def few_arenas(count: int) -> bool:
    """At most ``count`` malloc arenas for the process; False where it is not glibc.

    glibc gives a thread that allocates its own arena, up to eight per core, and
    each arena keeps its own free space. zero-fuse's 16 libfuse threads each
    allocate (libfuse's nodes and hash tables, SQLite's page caches, Python's
    larger objects), so what a thread freed served only that thread's next
    allocations. With every name of a million files in the kernel's cache, the
    peak RSS was 320 MiB across 13 arenas, 289-302 MiB with two and 280-286 with one
    (bench/quick.py lookups --files 1000000; decision 115). The GIL runs one
    thread's Python at a time, so more arenas bought no speed (bench/ab.py).
    Call it before the threads start."""
    if _LIBC is None:
        return False
    ok = bool(_LIBC.mallopt(M_ARENA_MAX, count))
    if not ok:
        log.debug("glibc refused to limit its malloc arenas; keeping one per thread")
    return ok


def release_free() -> None:
    """Give memory no longer in use back to the kernel (after a burst of work)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def fewer_gc_passes() -> None:
    """Run the cyclic collector less often, and never over what start-up built.
    Each request allocates many short-lived objects (SQLAlchemy rows and
    statements) that plain reference counting frees; the default threshold of
    700 allocations ran a collection several times per chunk uploaded and took
    about a tenth of the worker's CPU (perf, a sequential write)."""
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)


GC_THRESHOLD = 20_000
