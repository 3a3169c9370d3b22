#!/usr/bin/env python3
"""A bare Python FUSE passthrough (mfusepy on libfuse 3), the bench's floor for
what any Python FUSE filesystem costs: every call goes straight to a folder.

    python bench/passthrough.py <backing folder> <mount point>

mfusepy turns an OSError into its errno. Runs in the foreground until unmounted (fusermount3 -u) or sent SIGTERM/SIGINT.
"""

import ctypes.util
import errno
import os
import sys

if not os.environ.get("FUSE_LIBRARY_PATH"):  # mfusepy prefers libfuse 2 unless told (as zero/fuse/binding.py does)
    os.environ["FUSE_LIBRARY_PATH"] = ctypes.util.find_library("fuse3") or "libfuse3.so.3"

import mfusepy  # noqa: E402

STAT_KEYS = ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks",
             "st_atime_ns", "st_mtime_ns", "st_ctime_ns")


class Passthrough(mfusepy.Operations):
    use_ns = True

    def __init__(self, root: str):
        self.root = os.path.realpath(root)

    def _p(self, path: str) -> str:
        return self.root + path

    def getattr(self, path, fh=None):
        st = os.fstat(fh) if fh is not None else os.lstat(self._p(path))
        return {key.replace("_ns", ""): getattr(st, key) for key in STAT_KEYS}  # use_ns: times in ns

    def readdir(self, path, fh):
        return [".", "..", *os.listdir(self._p(path))]

    def statfs(self, path):
        sv = os.statvfs(self._p(path))
        return {key: getattr(sv, key) for key in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail",
                                                  "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")}

    def access(self, path, amode):
        if not os.access(self._p(path), amode):
            raise mfusepy.FuseOSError(errno.EACCES)
        return 0

    def chmod(self, path, mode): return os.chmod(self._p(path), mode)
    def chown(self, path, uid, gid): return os.chown(self._p(path), uid, gid, follow_symlinks=False)
    def mkdir(self, path, mode): return os.mkdir(self._p(path), mode)
    def rmdir(self, path): return os.rmdir(self._p(path))
    def unlink(self, path): return os.unlink(self._p(path))
    def rename(self, old, new): return os.rename(self._p(old), self._p(new))
    def link(self, target, source): return os.link(self._p(source), self._p(target))
    def symlink(self, target, source): return os.symlink(source, self._p(target))
    def readlink(self, path): return os.readlink(self._p(path))
    def mknod(self, path, mode, dev): return os.mknod(self._p(path), mode, dev)
    def utimens(self, path, times=None): return os.utime(self._p(path), ns=times, follow_symlinks=False)

    def truncate(self, path, length, fh=None):
        if fh is not None:
            return os.ftruncate(fh, length)
        return os.truncate(self._p(path), length)

    def open(self, path, flags): return os.open(self._p(path), flags)
    def create(self, path, mode, flags=os.O_WRONLY): return os.open(self._p(path), flags | os.O_CREAT, mode)
    def read(self, path, size, offset, fh): return os.pread(fh, size, offset)
    def write(self, path, data, offset, fh): return os.pwrite(fh, data, offset)
    def flush(self, path, fh): return 0
    def release(self, path, fh): return os.close(fh)
    def fsync(self, path, datasync, fh): return os.fdatasync(fh) if datasync else os.fsync(fh)


def main() -> int:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    mfusepy.FUSE(Passthrough(sys.argv[1]), sys.argv[2], foreground=True, nothreads=False, fsname="passthrough")
    return 0


if __name__ == "__main__":
    sys.exit(main())
