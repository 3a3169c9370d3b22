"""mfusepy's Operations for zero: each method resolves its path or handle,
asks the module that owns the concept, and lets ``translated`` turn zero's
errors into errno. No state decisions are made here.

    tree       the in-memory namespace       names     create/remove/rename names
    data       read/write/truncate/fsync     leases    write leases and descriptors
    flusher    batching, throttling, space   xattrs    extended attributes
    worker_link  fault-ins and uploads asked of zero-worker
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat

from zero.cachedir import CacheDir
from zero.config import Config
from zero.errors import WorkerUnavailable
from zero.fuse.binding import FuseOSError, KernelCache, Operations
from zero.fuse.chunkfiles import ChunkFiles
from zero.fuse.data import ATTR_TIMEOUT_S, DataPath
from zero.fuse.flusher import Flusher
from zero.fuse.inodes import Handle, Inode
from zero.fuse.leases import Leases
from zero.fuse.names import Names
from zero.fuse.opstats import OpStats
from zero.fuse.readahead import raise_readahead
from zero.fuse.translate import NAME_MAX_BYTES, translated
from zero.fuse.tree import Tree, now_ns
from zero.fuse.worker_link import WorkerLink
from zero.fuse.xattrs import Xattrs
from zero.state import backlog
from zero.state.db import Database

log = logging.getLogger(__name__)

STAT_BLOCK_SIZE = 128 * 1024
MAX_REQUEST_BYTES = 1024 * 1024
STATFS_BLOCK_BYTES = 4096
STATFS_INODES = 2**40
# Names change only through this mount (one zero-fuse per cache, and the kernel
# updates its own dentries on every create, unlink and rename it passes on), so
# the kernel may keep names and "no such name" for long: a stat after a create
# costs no LOOKUP. Attributes keep the short timeout: st_blocks changes when the
# worker evicts, and other names of a hard-linked file are invalidated by hand.
ENTRY_TIMEOUT_S = 30.0


class ZeroOperations(Operations):
    use_ns = True

    def __init__(self, database: Database, cache: CacheDir, config: Config, worker: WorkerLink,
                 chunk_size: int, op_stats: OpStats | None = None, mountpoint: str | None = None):
        self.database = database
        self.mountpoint = mountpoint  # to tune the kernel's read-ahead for it, once mounted
        self.op_stats = op_stats or OpStats(database)  # counted by ``translated``
        self.config = config
        self.worker = worker
        self.files = ChunkFiles(cache)
        self.kernel_cache = KernelCache()
        self.tree = Tree(database, self.files, self.kernel_cache, config.memory_inodes)
        self.leases = Leases(self.tree, cache, self.files, worker)
        self.flusher = Flusher(self.tree, self.leases, self.files, cache, config, worker)
        self.names = Names(self.tree, self.flusher.admit_new_name)
        self.data = DataPath(self.tree, self.leases, self.flusher, self.files, config, worker, chunk_size)
        self.xattrs = Xattrs(self.tree)
        self.handles: dict[int, Handle] = {}
        self._fh_counter = itertools.count(1)

    # --- lifecycle ----------------------------------------------------------------------

    def init_with_config(self, conn_info, config) -> None:
        if config is not None:
            config.use_ino = 1          # st_ino is ours: hard links show one inode
            # hard_remove stays off: libfuse "hides" an open file it unlinks by renaming it to
            # .fuse_hiddenXXXX, which keeps path-based calls (fstat) working; zero turns that
            # rename into an unlink and keeps the name out of sight (see Names._hide).
            config.nullpath_ok = 1      # handle-based calls work on unlinked files
            config.attr_timeout = ATTR_TIMEOUT_S
            config.entry_timeout = ENTRY_TIMEOUT_S
            config.negative_timeout = ENTRY_TIMEOUT_S
            config.kernel_cache = 0
            config.auto_cache = 0
        if conn_info is not None:
            conn_info.max_write = MAX_REQUEST_BYTES
            conn_info.max_readahead = MAX_REQUEST_BYTES
        if self.mountpoint is not None:  # mounted by now: INIT is the mount's first request
            raise_readahead(self.mountpoint, MAX_REQUEST_BYTES // 1024)
        self.kernel_cache.start()
        self.start()

    @property
    def started(self) -> bool:
        return self.flusher.started

    def start(self) -> None:
        self.files.start()
        self.flusher.start()

    def destroy(self, path) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        """Unmount: persist everything, let go of every lease, and if a worker
        runs, wait for it to upload what is dirty."""
        if not self.flusher.stop():
            return
        self.kernel_cache.stop()
        self.flusher.flush()
        with self.tree.lock:
            inodes = list(self.tree.inodes.values())
        for inode in inodes:
            with inode.lock:
                self.leases.release(inode)
        # Every file with chunks not uploaded, not only those still in memory (idle ones may be let go).
        by_inode: dict[int, dict] = {}
        with self.database.read() as connection:
            for (ino, idx), version in backlog.unuploaded_versions(connection).items():
                by_inode.setdefault(ino, {})[(ino, idx)] = version
        self.files.stop()
        self.files.close_all()
        self.worker.wake_worker_now()
        running = self.worker.worker_pid() is not None
        refusal = (self.worker.refusal() if running else self.worker.last_refusal()) if by_inode else None
        if refusal:
            # Waiting would only run out faultInTimeout: this worker uploads nothing.
            log.warning("Unmounting without waiting for zero-worker: %s uploads nothing from this cache, because %s. "
                        "%d file(s) changed here are not uploaded from it", "it" if running else "the last one to run",
                        refusal, len(by_inode))
        elif by_inode and running:
            log.info("Unmounting: waiting for zero-worker to upload %d file(s)", len(by_inode))
            for ino, versions in by_inode.items():
                try:
                    self.worker.wait_uploaded(ino, versions)
                except WorkerUnavailable as error:
                    log.warning("Unmounting without waiting further: %s; the worker will upload the rest "
                                "when it next runs", error)
                    break
        self.database.durable_checkpoint()

    # --- resolving ----------------------------------------------------------------------

    def _target(self, path: str | None, fh: int | None) -> Inode:
        if fh is not None and fh in self.handles:
            return self.handles[fh].inode
        if path is None:
            raise FuseOSError(errno.EBADF)
        return self.tree.resolve(path)

    def _after_change(self, inode: Inode, path: str | None) -> None:
        """A file with other names, or with a libfuse hidden name (unlinked while
        open): the kernel forgets what it cached under them. A directory has one
        name whatever its nlink (tar x sets three attributes on each one, and each
        cost a query for its paths). Handle-based calls (fsync, flush, release)
        get no path (nullpath_ok), so their own name is dropped too."""
        if not inode.is_dir and self.tree.kernel_inodes(inode) > 1:
            self.tree.invalidate_names(inode, path)

    # --- attributes ------------------------------------------------------------------------

    @translated
    def getattr(self, path, fh=None):
        inode = self._target(path, fh)
        attrs = inode.stat(STAT_BLOCK_SIZE, self.data.allocated_bytes(inode) if inode.is_file else None)
        if (fh is None or fh not in self.handles) and path is not None and self.tree.is_hidden_name(path):
            attrs["st_nlink"] += 1  # libfuse takes one off for its hidden name, which Names._hide already did
        return attrs

    @translated
    def chmod(self, path, mode, fh=None):
        inode = self._target(path, fh)
        with self.tree.lock:
            inode.mode = stat.S_IFMT(inode.mode) | stat.S_IMODE(mode)
            inode.ctime_ns = now_ns()
            self._attributes_changed(inode)
        self._after_change(inode, path)

    @translated
    def chown(self, path, uid, gid, fh=None):
        inode = self._target(path, fh)
        with self.tree.lock:
            if uid != -1:
                inode.uid = uid
            if gid != -1:
                inode.gid = gid
            if (uid != -1 or gid != -1) and not inode.is_dir and inode.mode & 0o111:
                inode.mode &= ~stat.S_ISUID  # as ext4: a changed owner drops set-user-id
                if inode.mode & stat.S_IXGRP:
                    inode.mode &= ~stat.S_ISGID
            inode.ctime_ns = now_ns()
            self._attributes_changed(inode)
        self._after_change(inode, path)

    @translated
    def utimens(self, path, times, fh=None):
        inode = self._target(path, fh)
        now = now_ns()
        atime, mtime = times
        with self.tree.lock:
            if atime != "omit":
                inode.atime_ns = now if atime == "now" else atime
            if mtime != "omit":
                inode.mtime_ns = now if mtime == "now" else mtime
            inode.ctime_ns = now
            self._attributes_changed(inode)
        self._after_change(inode, path)

    def _attributes_changed(self, inode: Inode) -> None:
        """chmod, chown, utimens: batched like sizes and times (tar x sets all
        three on every file: three commits each). The next batch, within
        CLOSE_BATCH_S, commits them; fsync commits them at once."""
        self.tree.mark_unflushed(inode)
        self.flusher.flush_soon()

    # --- directories ---------------------------------------------------------------------

    @translated
    def opendir(self, path):
        inode = self.tree.resolve(path)
        if not inode.is_dir:
            raise FuseOSError(errno.ENOTDIR)
        with self.tree.lock:
            fh = next(self._fh_counter)
            self.handles[fh] = Handle(inode=inode, flags=os.O_RDONLY, writable=False, append=False, is_dir=True)
            inode.open_handles += 1  # keeps it in memory: fchmod through the handle changes this object
        return fh

    @translated
    def releasedir(self, path, fh):
        handle = self.handles.pop(fh, None)
        if handle is not None:
            with self.tree.lock:
                self.tree.use(handle.inode).open_handles -= 1

    @translated
    def readdir(self, path, fh):
        inode = self._target(path, fh)
        listing = self.tree.listing(inode)
        yield ".", {"st_ino": inode.ino, "st_mode": inode.mode}, 0
        yield "..", {"st_ino": self.tree.parent_ino(inode), "st_mode": stat.S_IFDIR}, 0
        for name, ino, mode in listing:
            yield name.decode("utf-8", "surrogateescape"), {"st_ino": ino, "st_mode": mode}, 0

    @translated
    def fsyncdir(self, path, datasync, fh):
        self.flusher.flush()
        self.data.fsync_names(self._target(path, fh))

    # --- names -------------------------------------------------------------------------------

    @translated
    def mkdir(self, path, mode):
        self.names.make(path, stat.S_IFDIR | stat.S_IMODE(mode), 0, None)

    @translated
    def rmdir(self, path):
        self.names.rmdir(path)

    @translated
    def mknod(self, path, mode, dev):
        self.names.make(path, mode, dev, None)

    @translated
    def symlink(self, target, source):
        """Create ``target`` as a symbolic link whose content is ``source``."""
        content = source.encode("utf-8", "surrogateescape")
        if len(content) >= 4096:
            raise FuseOSError(errno.ENAMETOOLONG)
        self.names.make(target, stat.S_IFLNK | 0o777, 0, content)

    @translated
    def readlink(self, path):
        inode = self.tree.resolve(path)
        if not stat.S_ISLNK(inode.mode):
            raise FuseOSError(errno.EINVAL)
        return inode.target.decode("utf-8", "surrogateescape")

    @translated
    def link(self, target, source):
        self.names.link(target, source)

    @translated
    def unlink(self, path):
        self.names.unlink(path)

    @translated
    def rename(self, old, new, flags=0):
        self.names.rename(old, new, flags)

    # --- open files ----------------------------------------------------------------------------

    @translated
    def create(self, path, mode, flags):
        writable = (flags & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR)
        inode = self.names.make(path, stat.S_IFREG | stat.S_IMODE(mode), 0, None, lease_first_chunk=writable)
        return self._open_handle(inode, flags), 1

    @translated
    def open(self, path, flags):
        inode = self.tree.resolve(path)
        fh = self._open_handle(inode, flags)
        if flags & os.O_TRUNC and self.handles[fh].writable and inode.size:
            with inode.lock:
                self.data.truncate(inode, 0)
        # Keep the page cache: every change passes through this kernel inode, unless
        # the file has other names (other kernel inodes in libfuse's path API).
        return fh, int(self.tree.kernel_inodes(inode) == 1)

    def _open_handle(self, inode: Inode, flags: int) -> int:
        writable = (flags & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR)
        handle = Handle(inode=inode, flags=flags, writable=writable, append=bool(flags & os.O_APPEND))
        with self.tree.lock:
            fh = next(self._fh_counter)
            self.handles[fh] = handle
            inode.open_handles += 1
            if writable:
                inode.write_handles += 1
        return fh

    @translated
    def release(self, path, fh):
        handle = self.handles.pop(fh, None)
        if handle is None:
            return
        inode = self.tree.use(handle.inode)  # kept in memory until this release ends
        with inode.lock:
            with self.tree.lock:
                inode.open_handles -= 1
                if handle.writable:
                    inode.write_handles -= 1
                last_writer = handle.writable and inode.write_handles == 0
        if last_writer:
            self.flusher.release_soon(inode)
            self._after_change(inode, None)
        self.tree.purge_if_unused(inode)

    @translated
    def flush(self, path, fh):
        # Size and times are batched (the flusher, the last close, fsync); the
        # mount-time reconciler restores sizes after a crash, so close costs no commit.
        handle = self.handles.get(fh)
        if handle is not None and handle.writable:
            self._after_change(handle.inode, path)

    @translated
    def fsync(self, path, datasync, fh):
        inode = self._target(path, fh)
        try:
            self.data.fsync(inode)
        finally:  # even if the remotes' promise failed, the bytes are in the cache files
            self._after_change(inode, path)  # a reader of another name sees what fsync made durable

    # --- data ------------------------------------------------------------------------------------

    @translated
    def read(self, path, size, offset, fh):
        return self.data.read(self._target(path, fh), size, offset)

    @translated
    def write(self, path, data, offset, fh):
        handle = self.handles.get(fh)
        inode = handle.inode if handle is not None else self.tree.resolve(path)
        return self.data.write(inode, handle, data, offset)

    @translated
    def truncate(self, path, length, fh=None):
        inode = self._target(path, fh)
        if inode.is_dir:
            raise FuseOSError(errno.EISDIR)
        with inode.lock:
            self.data.truncate(inode, length)
        self._after_change(inode, path)

    # --- extended attributes ---------------------------------------------------------------------

    @translated
    def setxattr(self, path, name, value, options, position=0):
        self.xattrs.check_settable(name, value)
        self.xattrs.set(self.tree.resolve(path), name, value, options)

    @translated
    def getxattr(self, path, name, position=0):
        return self.xattrs.get(self.tree.resolve(path), name)

    @translated
    def listxattr(self, path):
        return self.xattrs.names(self.tree.resolve(path))

    @translated
    def removexattr(self, path, name):
        self.xattrs.remove(self.tree.resolve(path), name)

    # --- the filesystem as a whole ---------------------------------------------------------------

    @translated
    def statfs(self, path):
        block = STATFS_BLOCK_BYTES
        used = self.tree.used_bytes
        capacity = max(self.config.capacity_bytes, used)
        free = max(capacity - used, 0)
        files = self.tree.inode_count
        return {
            "f_bsize": block, "f_frsize": block,
            "f_blocks": capacity // block, "f_bfree": free // block, "f_bavail": free // block,
            "f_files": STATFS_INODES, "f_ffree": STATFS_INODES - files,
            "f_favail": STATFS_INODES - files, "f_namemax": NAME_MAX_BYTES,
        }
