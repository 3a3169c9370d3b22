"""mfusepy, loaded on libfuse 3, with the few callbacks zero needs raw.

mfusepy looks for libfuse 2 before libfuse 3 unless FUSE_LIBRARY_PATH says
otherwise, so this module settles the library before importing it.

The subclass passes what stock mfusepy drops: rename flags (RENAME_NOREPLACE,
RENAME_EXCHANGE), UTIME_NOW/UTIME_OMIT, the file handle for fchmod/fchown/
ftruncate/futimens on files that are already unlinked, and keep_cache on open.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

from zero.errors import MountError

UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2


def _settle_library() -> None:
    if os.environ.get("FUSE_LIBRARY_PATH"):
        return
    path = ctypes.util.find_library("fuse3")
    if not path:
        raise MountError("libfuse 3 is not installed; install it with: apt-get install fuse3")
    os.environ["FUSE_LIBRARY_PATH"] = path


_settle_library()

import mfusepy  # noqa: E402  (must follow _settle_library)

LIBRARY_PATH = mfusepy._libfuse_path
LIBRARY_VERSION = (mfusepy.fuse_version_major, mfusepy.fuse_version_minor)
if LIBRARY_VERSION[0] != 3:
    raise MountError(f"zero needs libfuse 3 but loaded {LIBRARY_PATH} ({LIBRARY_VERSION[0]}.{LIBRARY_VERSION[1]}); "
                     "install fuse3 or point FUSE_LIBRARY_PATH at libfuse3.so.3")

Operations = mfusepy.Operations
FuseOSError = mfusepy.FuseOSError
fuse_get_context = mfusepy.fuse_get_context


class KernelCache:
    """Tells the kernel to drop what it cached for a path.

    libfuse's path API gives each name of a hard-linked file its own kernel
    inode, so a change made through one name leaves the others' cached
    attributes and pages stale. Callers hold no zero lock while notifying, and
    never notify about the file a pending write is for (its pages are locked).
    """

    def __init__(self):
        self._fuse = None

    def start(self) -> None:
        """Call from inside a FUSE request (init): that is when the context is set."""
        self._fuse = ctypes.c_void_p(mfusepy._libfuse.fuse_get_context().contents.fuse)
        mfusepy._libfuse.fuse_invalidate_path.argtypes = [ctypes.c_void_p, ctypes.c_char_p]

    def invalidate(self, path: bytes) -> None:
        if self._fuse is not None:
            mfusepy._libfuse.fuse_invalidate_path(self._fuse, path)

    def stop(self) -> None:
        self._fuse = None


def _fh(fip) -> int | None:
    return fip.contents.fh if fip else None


def _timespec_ns(ts) -> int | str:
    if ts.tv_nsec == UTIME_NOW:
        return "now"
    if ts.tv_nsec == UTIME_OMIT:
        return "omit"
    return ts.tv_sec * 10**9 + ts.tv_nsec


# libfuse calls Python on its own threads. For each call, ctypes makes a Python
# thread state and deletes it after (PyGILState_Ensure/Release): an allocation,
# an mmap and munmap of the frame stack, twice per call, eight calls per small
# file created (measured with strace). Taking one more hold on the thread state
# the first time a libfuse thread calls keeps it for the thread's life; the
# marker is a thread-local, which lives in that very thread state. main.py
# keeps every libfuse thread alive (max_idle_threads = max_threads): a thread
# that exited would leave its thread state behind.
_held_thread_state = threading.local()
_hold_thread_state = ctypes.pythonapi.PyGILState_Ensure


class ZeroFUSE(mfusepy.FUSE):
    def _wrapper(self, func, *args, **kwargs):
        if not getattr(_held_thread_state, "held", False):
            _hold_thread_state()
            _held_thread_state.held = True
        return super()._wrapper(func, *args, **kwargs)

    def _path(self, path):
        return None if path is None else path.decode(self.encoding, self.errors)

    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        return self.operations.rename(self._path(old), self._path(new), flags)

    def utimens_fuse_3(self, path, buf, fip) -> int:
        if buf:
            times = (_timespec_ns(buf.contents.actime), _timespec_ns(buf.contents.modtime))
        else:
            times = ("now", "now")
        return self.operations.utimens(self._path(path), times, _fh(fip))

    def chmod_fuse_3(self, path, mode: int, fip) -> int:
        return self.operations.chmod(self._path(path), mode, _fh(fip))

    def chown_fuse_3(self, path, uid: int, gid: int, fip) -> int:
        if ctypes.c_uint32(uid + 1).value == 0:
            uid = -1
        if ctypes.c_uint32(gid + 1).value == 0:
            gid = -1
        return self.operations.chown(self._path(path), uid, gid, _fh(fip))

    def truncate_fuse_3(self, path, length: int, fip) -> int:
        return self.operations.truncate(self._path(path), length, _fh(fip))

    def open(self, path: bytes, fip) -> int:
        info = fip.contents
        info.fh, info.keep_cache = self.operations.open(self._path(path), info.flags)
        return 0

    def create(self, path: bytes, mode: int, fip) -> int:
        info = fip.contents
        info.fh, info.keep_cache = self.operations.create(self._path(path), mode, info.flags)
        return 0
