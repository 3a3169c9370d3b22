"""POSIX -> state + chunk files. The only place zero's errors become errno.

Threads: libfuse calls these from several threads. ``ns_lock`` serialises
namespace changes (zero-fuse is the namespace's only writer, so checking
and applying under it is race-free); each inode's ``lock`` serialises its
data changes. Reads take neither: they pread the shared chunk descriptor.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import logging
import os
import stat
import threading
import time

from zero.cachedir import CacheDir
from zero.config import Config
from zero.errors import StateConflict, WorkerUnavailable, ZeroError
from zero.fuse.binding import FuseOSError, KernelCache, Operations, fuse_get_context
from zero.fuse.chunkfiles import ChunkFiles
from zero.fuse.faultin import WorkerLink
from zero.fuse.inodes import Handle, Inode
from zero.state import chunks, namespace, requests
from zero.state.db import Database
from zero.state.schema import ChunkState

log = logging.getLogger(__name__)

NAME_MAX_BYTES = 255
XATTR_NAME_MAX_BYTES = 255
XATTR_VALUE_MAX_BYTES = 64 * 1024
XATTR_CREATE, XATTR_REPLACE = 1, 2
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
STAT_BLOCK_SIZE = 128 * 1024
FLUSH_INTERVAL_S = 1.0
DISK_CHECK_INTERVAL_S = 0.5
THROTTLE_WAIT_S = 0.05        # how long one write waits for the worker while dirty data is over target
THROTTLE_QUIET_S = 0.25       # while throttled, chunks quiet this long go to the worker at once
ATTR_TIMEOUT_S = 1.0
HIDDEN_PREFIX = ".fuse_hidden"
ACL_XATTRS = (b"system.posix_acl_access", b"system.posix_acl_default")


def _errno_of(error: Exception) -> int:
    if isinstance(error, FileNotFoundError):
        return errno.ENOENT
    if isinstance(error, OSError) and error.errno:
        return error.errno
    return errno.EIO


def translated(method):
    """zero's errors -> errno, at the border, with a logged reason for EIO."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except FuseOSError:
            raise
        except WorkerUnavailable as error:
            log.error("%s failed: %s", method.__name__, error)
            raise FuseOSError(errno.EIO) from None
        except (ZeroError, StateConflict) as error:
            log.error("%s failed: %s", method.__name__, error)
            raise FuseOSError(errno.EIO) from None
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                log.error("%s failed: %s", method.__name__, error)
            raise FuseOSError(_errno_of(error)) from None
    return wrapper


def _now_ns() -> int:
    return time.time_ns()


def _name_bytes(name: str) -> bytes:
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > NAME_MAX_BYTES:
        raise FuseOSError(errno.ENAMETOOLONG)
    return raw


def _split(path: str) -> tuple[str, str]:
    parent, _, name = path.rpartition("/")
    return parent or "/", name


class ZeroOperations(Operations):
    use_ns = True

    def __init__(self, database: Database, cache: CacheDir, config: Config, worker: WorkerLink,
                 chunk_size: int):
        self.database = database
        self.cache = cache
        self.config = config
        self.worker = worker
        self.chunk_size = chunk_size
        self.files = ChunkFiles(cache)
        self.ns_lock = threading.RLock()
        self.inodes: dict[int, Inode] = {}
        self.children: dict[int, dict[bytes, int]] = {}
        self.hidden: dict[int, dict[bytes, int]] = {}  # parent -> libfuse's names for unlinked open files
        self.handles: dict[int, Handle] = {}
        self._fh_counter = itertools.count(1)
        self._accesses: dict[tuple[int, int], float] = {}
        self._unflushed: set[int] = set()
        self._used_bytes = 0
        self._inode_count = 0
        self._disk_checked_at = 0.0
        self._disk_full = False
        self._dirty_over_target = False
        self.dirty_bytes = 0
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self.kernel_cache = KernelCache()

    # --- lifecycle ----------------------------------------------------------------

    def init_with_config(self, conn_info, config) -> None:
        if config is not None:
            config.use_ino = 1          # st_ino is ours: hard links show one inode
            # hard_remove stays off: libfuse "hides" an open file it unlinks by renaming it to
            # .fuse_hiddenXXXX, which keeps path-based calls (fstat) working; zero turns that
            # rename into an unlink and keeps the name out of sight (see _hide).
            config.nullpath_ok = 1      # handle-based calls work on unlinked files
            config.attr_timeout = ATTR_TIMEOUT_S
            config.entry_timeout = ATTR_TIMEOUT_S
            config.negative_timeout = ATTR_TIMEOUT_S
            config.kernel_cache = 0
            config.auto_cache = 0
        if conn_info is not None:
            conn_info.max_write = 1024 * 1024
            conn_info.max_readahead = 1024 * 1024
        self.kernel_cache.start()
        self.start()

    @property
    def started(self) -> bool:
        return self._flusher is not None

    def start(self) -> None:
        self._refresh_totals()
        self._flusher = threading.Thread(target=self._flush_loop, name="zero-flusher", daemon=True)
        self._flusher.start()

    def destroy(self, path) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        """Unmount: persist everything, let go of every lease, and if a worker
        runs, wait for it to upload what is dirty."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join(timeout=10)
        self.kernel_cache.stop()
        self.flush_everything()
        with self.ns_lock:
            inodes = list(self.inodes.values())
        pending = {}
        for inode in inodes:
            with inode.lock:
                self._release_leases(inode)
        with self.database.read() as connection:
            for inode in inodes:
                versions = self._unuploaded_versions(connection, inode.ino)
                if versions:
                    pending[inode.ino] = versions
        self.files.close_all()
        self.worker.wake_worker_now()
        if pending and self.worker.worker_pid() is not None:
            log.info("Unmounting: waiting for zero-worker to upload %d file(s)", len(pending))
            for ino, versions in pending.items():
                try:
                    self.worker.wait_uploaded(ino, versions)
                except WorkerUnavailable as error:
                    log.warning("Unmounting without waiting further: %s; the worker will upload the rest "
                                "when it next runs", error)
                    break
        self.database.durable_checkpoint()

    # --- the in-memory namespace ----------------------------------------------------

    def _inode(self, ino: int) -> Inode:
        inode = self.inodes.get(ino)
        if inode is None:
            with self.database.read() as connection:
                row = namespace.get_inode(connection, ino)
            if row is None:
                raise FuseOSError(errno.ENOENT)
            inode = self.inodes.setdefault(ino, Inode(row))
        return inode

    def _entries(self, parent: int) -> dict[bytes, int]:
        entries = self.children.get(parent)
        if entries is None:
            with self.database.read() as connection:
                entries = {name: ino for name, ino, _ in namespace.list_entries(connection, parent)}
            self.children[parent] = entries
        return entries

    def _resolve(self, path: str) -> Inode:
        with self.ns_lock:
            inode = self._inode(namespace.ROOT_INO)
            for component in path.split("/"):
                if not component:
                    continue
                if not inode.is_dir:
                    raise FuseOSError(errno.ENOTDIR)
                name = _name_bytes(component)
                ino = self._entries(inode.ino).get(name)
                if ino is None:
                    ino = self.hidden.get(inode.ino, {}).get(name)
                if ino is None:
                    raise FuseOSError(errno.ENOENT)
                inode = self._inode(ino)
            return inode

    def _parent_and_name(self, path: str) -> tuple[Inode, bytes]:
        parent_path, name = _split(path)
        parent = self._resolve(parent_path)
        if not parent.is_dir:
            raise FuseOSError(errno.ENOTDIR)
        return parent, _name_bytes(name)

    def _target(self, path: str | None, fh: int | None) -> Inode:
        if fh is not None and fh in self.handles:
            return self.handles[fh].inode
        if path is None:
            raise FuseOSError(errno.EBADF)
        return self._resolve(path)

    def _persist(self, connection, inode: Inode) -> None:
        namespace.update_inode(connection, inode.ino, **inode.attrs())
        inode.attrs_unflushed = False
        self._unflushed.discard(inode.ino)

    def _invalidate_names(self, inode: Inode, except_path: str | None = None) -> None:
        """After a change through one name of a hard-linked file, make the
        kernel forget what it cached under the other names."""
        with self.database.read() as connection:
            paths = namespace.paths_of(connection, inode.ino)
        skip = except_path.encode("utf-8", "surrogateescape") if except_path else None
        for path in paths:
            if path != skip:
                self.kernel_cache.invalidate(path)

    def _touch_dir(self, connection, parent: Inode, now: int) -> None:
        parent.mtime_ns = parent.ctime_ns = now
        self._persist(connection, parent)

    # --- attributes ------------------------------------------------------------------

    @translated
    def getattr(self, path, fh=None):
        attrs = self._target(path, fh).stat(STAT_BLOCK_SIZE)
        if (fh is None or fh not in self.handles) and path is not None and self._is_hidden_name(path):
            attrs["st_nlink"] += 1  # libfuse takes one off for its hidden name, which _hide already did
        return attrs

    def _is_hidden_name(self, path: str) -> bool:
        parent_path, name = _split(path)
        if not name.startswith(HIDDEN_PREFIX):
            return False
        with self.ns_lock:
            parent = self._resolve(parent_path)
            raw = _name_bytes(name)
            return raw in self.hidden.get(parent.ino, {}) and raw not in self._entries(parent.ino)

    @translated
    def chmod(self, path, mode, fh=None):
        inode = self._target(path, fh)
        with self.ns_lock, self.database.write() as connection:
            inode.mode = stat.S_IFMT(inode.mode) | stat.S_IMODE(mode)
            inode.ctime_ns = _now_ns()
            self._persist(connection, inode)
        if inode.nlink > 1:
            self._invalidate_names(inode, path)

    @translated
    def chown(self, path, uid, gid, fh=None):
        inode = self._target(path, fh)
        with self.ns_lock, self.database.write() as connection:
            if uid != -1:
                inode.uid = uid
            if gid != -1:
                inode.gid = gid
            if (uid != -1 or gid != -1) and not inode.is_dir and inode.mode & 0o111:
                inode.mode &= ~stat.S_ISUID  # as ext4: a changed owner drops set-user-id
                if inode.mode & stat.S_IXGRP:
                    inode.mode &= ~stat.S_ISGID
            inode.ctime_ns = _now_ns()
            self._persist(connection, inode)
        if inode.nlink > 1:
            self._invalidate_names(inode, path)

    @translated
    def utimens(self, path, times, fh=None):
        inode = self._target(path, fh)
        now = _now_ns()
        atime, mtime = times
        with self.ns_lock, self.database.write() as connection:
            if atime != "omit":
                inode.atime_ns = now if atime == "now" else atime
            if mtime != "omit":
                inode.mtime_ns = now if mtime == "now" else mtime
            inode.ctime_ns = now
            self._persist(connection, inode)

    # --- directories ---------------------------------------------------------------
        if inode.nlink > 1:
            self._invalidate_names(inode, path)

    @translated
    def opendir(self, path):
        inode = self._resolve(path)
        if not inode.is_dir:
            raise FuseOSError(errno.ENOTDIR)
        fh = next(self._fh_counter)
        self.handles[fh] = Handle(inode=inode, flags=os.O_RDONLY, writable=False, append=False, is_dir=True)
        return fh

    @translated
    def releasedir(self, path, fh):
        self.handles.pop(fh, None)

    @translated
    def readdir(self, path, fh):
        inode = self._target(path, fh)
        with self.ns_lock:
            entries = list(self._entries(inode.ino).items())
            parent = namespace.ROOT_INO
            if inode.ino != namespace.ROOT_INO:
                with self.database.read() as connection:
                    parent = namespace.parent_of(connection, inode.ino) or namespace.ROOT_INO
            modes = {}
            for name, ino in entries:
                child = self.inodes.get(ino)
                if child is not None:
                    modes[ino] = child.mode
            if len(modes) < len(entries):
                with self.database.read() as connection:
                    for name, ino, mode in namespace.list_entries(connection, inode.ino):
                        modes.setdefault(ino, mode)
        yield ".", {"st_ino": inode.ino, "st_mode": inode.mode}, 0
        yield "..", {"st_ino": parent, "st_mode": stat.S_IFDIR}, 0
        for name, ino in entries:
            yield name.decode("utf-8", "surrogateescape"), {"st_ino": ino, "st_mode": modes.get(ino, 0)}, 0

    @translated
    def mkdir(self, path, mode):
        self._make(path, stat.S_IFDIR | stat.S_IMODE(mode), 0, None)

    @translated
    def rmdir(self, path):
        with self.ns_lock:
            parent, name = self._parent_and_name(path)
            ino = self._entries(parent.ino).get(name)
            if ino is None:
                raise FuseOSError(errno.ENOENT)
            inode = self._inode(ino)
            if not inode.is_dir:
                raise FuseOSError(errno.ENOTDIR)
            if self._entries(ino):
                raise FuseOSError(errno.ENOTEMPTY)
            self.hidden.pop(ino, None)  # open files of a removed directory live on through their handles
            now = _now_ns()
            with self.database.write() as connection:
                namespace.delete_dentry(connection, parent.ino, name)
                namespace.delete_inode(connection, ino)
                parent.nlink -= 1
                self._touch_dir(connection, parent, now)
            del self._entries(parent.ino)[name]
            self.children.pop(ino, None)
            self.inodes.pop(ino, None)
            inode.nlink = 0

    @translated
    def fsyncdir(self, path, datasync, fh):
        self.database.durable_checkpoint()

    # --- creating names --------------------------------------------------------------

    def _make(self, path: str, mode: int, rdev: int, target: bytes | None) -> Inode:
        uid, gid, _ = fuse_get_context()
        with self.ns_lock:
            parent, name = self._parent_and_name(path)
            entries = self._entries(parent.ino)
            if name in entries:
                raise FuseOSError(errno.EEXIST)
            if parent.mode & stat.S_ISGID:
                gid = parent.gid  # as ext4: a set-group-id directory hands down its group
                if stat.S_ISDIR(mode):
                    mode |= stat.S_ISGID
            now = _now_ns()
            attrs = dict(mode=mode, uid=uid, gid=gid, nlink=2 if stat.S_ISDIR(mode) else 1, size=len(target or b""),
                         atime_ns=now, mtime_ns=now, ctime_ns=now, rdev=rdev)
            with self.database.write() as connection:
                ino = namespace.insert_inode(connection, target=target, **attrs)
                namespace.insert_dentry(connection, parent.ino, name, ino)
                if stat.S_ISDIR(mode):
                    parent.nlink += 1
                self._touch_dir(connection, parent, now)
                row = namespace.get_inode(connection, ino)
            inode = Inode(row)
            inode.xattrs = {}  # new: none yet
            self.inodes[ino] = inode
            entries[name] = ino
            if stat.S_ISDIR(mode):
                self.children[ino] = {}
            self._inode_count += 1
            return inode

    @translated
    def mknod(self, path, mode, dev):
        self._make(path, mode, dev, None)

    @translated
    def symlink(self, target, source):
        """Create ``target`` as a symbolic link whose content is ``source``."""
        content = source.encode("utf-8", "surrogateescape")
        if len(content) >= 4096:
            raise FuseOSError(errno.ENAMETOOLONG)
        self._make(target, stat.S_IFLNK | 0o777, 0, content)

    @translated
    def readlink(self, path):
        inode = self._resolve(path)
        if not stat.S_ISLNK(inode.mode):
            raise FuseOSError(errno.EINVAL)
        return inode.target.decode("utf-8", "surrogateescape")

    @translated
    def link(self, target, source):
        """Create ``target`` as a new name for the existing ``source``."""
        with self.ns_lock:
            inode = self._resolve(source)
            if inode.is_dir:
                raise FuseOSError(errno.EPERM)
            parent, name = self._parent_and_name(target)
            entries = self._entries(parent.ino)
            if name in entries:
                raise FuseOSError(errno.EEXIST)
            now = _now_ns()
            with self.database.write() as connection:
                namespace.insert_dentry(connection, parent.ino, name, inode.ino)
                inode.nlink += 1
                inode.ctime_ns = now
                self._persist(connection, inode)
                self._touch_dir(connection, parent, now)
            entries[name] = inode.ino
        self._invalidate_names(inode, target)

    # --- removing names --------------------------------------------------------------

    @translated
    def unlink(self, path):
        with self.ns_lock:
            parent, name = self._parent_and_name(path)
            entries = self._entries(parent.ino)
            ino = entries.get(name)
            if ino is None:
                hidden_ino = self.hidden.get(parent.ino, {}).pop(name, None)
                if hidden_ino is None:
                    raise FuseOSError(errno.ENOENT)
                hidden = self.inodes.get(hidden_ino)
                if hidden is not None:
                    self._purge_if_unused(hidden)
                return
            inode = self._inode(ino)
            if inode.is_dir:
                raise FuseOSError(errno.EISDIR)
            now = _now_ns()
            # The last name of a file nobody has open (rm -r): delete the inode in
            # the same commit. No handle can appear meanwhile: opens take ns_lock.
            last = inode.nlink == 1 and inode.open_handles == 0
            with (inode.lock if last else contextlib.nullcontext()), self.database.write() as connection:
                namespace.delete_dentry(connection, parent.ino, name)
                self._drop_link(connection, inode, now)
                self._touch_dir(connection, parent, now)
                if last:
                    indexes = namespace.delete_inode(connection, inode.ino)
            del entries[name]
            if last:
                self._forget_inode(inode)
        if last:
            self._delete_chunk_files(inode.ino, indexes)
            return
        if inode.nlink > 0:
            self._invalidate_names(inode)
        self._purge_if_unused(inode)

    def _drop_link(self, connection, inode: Inode, now: int) -> None:
        inode.nlink -= 1
        inode.ctime_ns = now
        self._persist(connection, inode)

    def _purge_if_unused(self, inode: Inode) -> None:
        """Delete an inode's data once no name and no handle keeps it."""
        if inode.nlink > 0 or inode.open_handles > 0:
            return  # the common case, without queueing on the namespace lock
        with self.ns_lock:
            if inode.nlink > 0 or inode.open_handles > 0 or inode.ino not in self.inodes:
                return
            with inode.lock:
                with self.database.write() as connection:
                    indexes = namespace.delete_inode(connection, inode.ino)
                self._forget_inode(inode)
        self._delete_chunk_files(inode.ino, indexes)

    def _forget_inode(self, inode: Inode) -> None:
        """After its rows were deleted; the caller holds ns_lock."""
        del self.inodes[inode.ino]
        self._inode_count -= 1
        self._unflushed.discard(inode.ino)
        inode.leases.clear()

    def _delete_chunk_files(self, ino: int, indexes) -> None:
        self.files.forget(ino, indexes)
        for idx in indexes:
            try:
                os.unlink(self.cache.chunk_path(ino, idx))
            except FileNotFoundError:
                pass

    # --- rename ------------------------------------------------------------------------

    @translated
    def rename(self, old, new, flags=0):
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise FuseOSError(errno.EINVAL)
        if _split(new)[1].startswith(HIDDEN_PREFIX) and not flags:
            return self._hide(old, new)
        replaced = None
        with self.ns_lock:
            old_parent, old_name = self._parent_and_name(old)
            new_parent, new_name = self._parent_and_name(new)
            old_entries = self._entries(old_parent.ino)
            new_entries = self._entries(new_parent.ino)
            ino = old_entries.get(old_name)
            if ino is None:
                raise FuseOSError(errno.ENOENT)
            moving = self._inode(ino)
            target_ino = new_entries.get(new_name)
            target = self._inode(target_ino) if target_ino is not None else None
            if flags & RENAME_EXCHANGE:
                if target is None:
                    raise FuseOSError(errno.ENOENT)
            elif target is not None and flags & RENAME_NOREPLACE:
                raise FuseOSError(errno.EEXIST)
            if moving.is_dir and self._is_within(new_parent.ino, moving.ino):
                raise FuseOSError(errno.EINVAL)
            if flags & RENAME_EXCHANGE and target.is_dir and self._is_within(old_parent.ino, target.ino):
                raise FuseOSError(errno.EINVAL)
            if target is not None and target.ino == moving.ino:
                return  # two names of one inode: POSIX says do nothing
            if target is not None and not flags & RENAME_EXCHANGE:
                if moving.is_dir and not target.is_dir:
                    raise FuseOSError(errno.ENOTDIR)
                if not moving.is_dir and target.is_dir:
                    raise FuseOSError(errno.EISDIR)
                if target.is_dir and self._entries(target.ino):
                    raise FuseOSError(errno.ENOTEMPTY)
            now = _now_ns()
            with self.database.write() as connection:
                if flags & RENAME_EXCHANGE:
                    namespace.repoint_dentry(connection, old_parent.ino, old_name, target.ino)
                    namespace.repoint_dentry(connection, new_parent.ino, new_name, moving.ino)
                    if old_parent is not new_parent:
                        shift = int(moving.is_dir) - int(target.is_dir)
                        old_parent.nlink -= shift
                        new_parent.nlink += shift
                    target.ctime_ns = now
                    self._persist(connection, target)
                else:
                    if target is not None:
                        namespace.delete_dentry(connection, new_parent.ino, new_name)
                        if target.is_dir:
                            namespace.delete_inode(connection, target.ino)
                            new_parent.nlink -= 1
                            target.nlink = 0
                        else:
                            self._drop_link(connection, target, now)
                            replaced = target
                    namespace.delete_dentry(connection, old_parent.ino, old_name)
                    namespace.insert_dentry(connection, new_parent.ino, new_name, moving.ino)
                    if moving.is_dir and old_parent is not new_parent:
                        old_parent.nlink -= 1
                        new_parent.nlink += 1
                moving.ctime_ns = now
                self._persist(connection, moving)
                self._touch_dir(connection, old_parent, now)
                if new_parent is not old_parent:
                    self._touch_dir(connection, new_parent, now)
            if flags & RENAME_EXCHANGE:
                old_entries[old_name] = target.ino
                new_entries[new_name] = moving.ino
            else:
                del old_entries[old_name]
                new_entries[new_name] = moving.ino
                if target is not None and target.is_dir:
                    self.children.pop(target.ino, None)
                    self.inodes.pop(target.ino, None)
        if replaced is not None:
            self._purge_if_unused(replaced)

    def _hide(self, old: str, new: str) -> None:
        """libfuse unlinks an open file by renaming it to a .fuse_hidden name and
        unlinking that name at the last close. For zero that rename is the unlink:
        the inode loses the name (nlink drops, as on ext4) and the hidden name
        resolves only for libfuse, never in a listing."""
        with self.ns_lock:
            parent, name = self._parent_and_name(old)
            _, hidden_name = self._parent_and_name(new)
            entries = self._entries(parent.ino)
            ino = entries.get(name)
            if ino is None:
                raise FuseOSError(errno.ENOENT)
            inode = self._inode(ino)
            now = _now_ns()
            with self.database.write() as connection:
                namespace.delete_dentry(connection, parent.ino, name)
                self._drop_link(connection, inode, now)
                self._touch_dir(connection, parent, now)
            del entries[name]
            self.hidden.setdefault(parent.ino, {})[hidden_name] = ino
        if inode.nlink > 0:
            self._invalidate_names(inode)  # as unlink: the other names' cached st_nlink is now wrong

    def _is_within(self, ino: int, ancestor: int) -> bool:
        """Is directory ``ino`` the directory ``ancestor`` or below it?"""
        with self.database.read() as connection:
            current: int | None = ino
            while current is not None:
                if current == ancestor:
                    return True
                if current == namespace.ROOT_INO:
                    return False
                current = namespace.parent_of(connection, current)
        return False

    # --- open files ----------------------------------------------------------------------

    @translated
    def create(self, path, mode, flags):
        inode = self._make(path, stat.S_IFREG | stat.S_IMODE(mode), 0, None)
        return self._open_handle(inode, flags), 1

    @translated
    def open(self, path, flags):
        inode = self._resolve(path)
        fh = self._open_handle(inode, flags)
        if flags & os.O_TRUNC and self.handles[fh].writable and inode.size:
            with inode.lock:
                self._truncate(inode, 0)
        # Keep the page cache: every change passes through this kernel inode, unless
        # the file has other names (other kernel inodes in libfuse's path API).
        return fh, int(inode.nlink == 1)

    def _open_handle(self, inode: Inode, flags: int) -> int:
        writable = (flags & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR)
        handle = Handle(inode=inode, flags=flags, writable=writable, append=bool(flags & os.O_APPEND))
        with self.ns_lock:
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
        inode = handle.inode
        with inode.lock:
            with self.ns_lock:
                inode.open_handles -= 1
                if handle.writable:
                    inode.write_handles -= 1
                last_writer = handle.writable and inode.write_handles == 0
            if last_writer:
                self._release_leases(inode, persist=True)
        if last_writer:
            self.worker.wake_worker()
            if inode.nlink > 1:
                self._invalidate_names(inode)
        self._purge_if_unused(inode)

    @translated
    def flush(self, path, fh):
        # Size and times are batched (the flusher, the last close, fsync); the
        # mount-time reconciler restores sizes after a crash, so close costs no commit.
        handle = self.handles.get(fh)
        if handle is not None and handle.writable:
            if handle.inode.nlink > 1:
                self._invalidate_names(handle.inode, path)

    @translated
    def fsync(self, path, datasync, fh):
        inode = self._target(path, fh)
        with inode.lock:
            for idx in list(inode.leases):
                chunk_file = self.files.acquire(inode.ino, idx)
                if chunk_file is not None:
                    try:
                        os.fsync(chunk_file.fd)
                    finally:
                        self.files.release(chunk_file)
            self._release_leases(inode, persist=True)
            with self.database.read() as connection:
                versions = self._unuploaded_versions(connection, inode.ino)
        self.database.durable_checkpoint()
        if versions and self.config.fsync_waits_for_upload:
            if self.worker.worker_pid() is None:
                log.warning("fsync of inode %d: the data is safe in the local cache, but zero-worker is not "
                            "running, so it is not uploaded yet", inode.ino)
                return
            self.worker.wait_uploaded(inode.ino, versions)

    @staticmethod
    def _unuploaded_versions(connection, ino: int) -> dict[int, int]:
        return {row.idx: row.version for row in chunks.all_rows_of(connection, ino)
                if row.state in (ChunkState.DIRTY.value, ChunkState.UPLOADING.value)}

    # --- data --------------------------------------------------------------------------------

    @translated
    def read(self, path, size, offset, fh):
        inode = self._target(path, fh)
        end = min(offset + size, inode.size)
        if offset >= end:
            return b""
        # Judged on arrival, before this read waits for a fault-in: the kernel sends
        # its read-ahead together, and reads that wait finish out of order.
        sequential = inode.last_read_end == offset
        inode.last_read_end = end
        if sequential and (end - 1) // self.chunk_size != (offset - 1) // self.chunk_size:
            self._prefetch_after(inode, (end - 1) // self.chunk_size)
        pieces = []
        position = offset
        now = time.time()
        while position < end:
            idx, within = divmod(position, self.chunk_size)
            length = min(self.chunk_size - within, end - position)
            pieces.append(self._read_chunk(inode.ino, idx, within, length))
            self._accesses[(inode.ino, idx)] = now
            position += length
        return b"".join(pieces)

    def _read_chunk(self, ino: int, idx: int, within: int, length: int) -> bytes:
        for _ in range(5):
            chunk_file = self.files.acquire(ino, idx)
            if chunk_file is not None:
                try:
                    data = os.pread(chunk_file.fd, length, within)
                finally:
                    self.files.release(chunk_file)
                if len(data) < length:
                    data += bytes(length - len(data))  # past the chunk file's end: a hole
                return data
            with self.database.read() as connection:
                row = chunks.get(connection, ino, idx)
            if row is None or row.state in (ChunkState.DIRTY.value, ChunkState.UPLOADING.value):
                # No chunk, or a new chunk whose writer took the lease but has not
                # created the file yet: nothing written there, a hole.
                return bytes(length)
            if row.state in (ChunkState.REMOTE.value, ChunkState.FETCHING.value):
                self.worker.wait_local(ino, idx)
            elif row.state == ChunkState.CLEAN.value:
                self._wait_eviction_settled(ino, idx)
            # otherwise the file was evicted and fetched back between our two looks: look again
        raise ZeroError(f"chunk {idx} of inode {ino} kept moving in and out of the cache while it was read; "
                        f"try the read again")

    def _prefetch_after(self, inode: Inode, last_idx: int) -> None:
        """A sequential reader crossed into a new chunk: ask for the next ones."""
        count = self.config.prefetch_chunks
        if count <= 0:
            return
        wanted = range(last_idx + 1, min(last_idx + 1 + count, (inode.size - 1) // self.chunk_size + 1))
        if not wanted:
            return
        with self.database.read() as connection:
            states = chunks.local_states(connection, inode.ino)
        remote = [idx for idx in wanted if states.get(idx) == ChunkState.REMOTE]
        if remote:
            with self.database.write() as connection:
                for idx in remote:
                    requests.request_fetch(connection, inode.ino, idx, requests.PREFETCH)
            self.worker.wake_worker()

    @translated
    def write(self, path, data, offset, fh):
        handle = self.handles.get(fh)
        inode = handle.inode if handle is not None else self._resolve(path)
        self._check_disk_space()
        if self._dirty_over_target:
            # Backpressure: the worker's next upload wakes us; the timeout keeps writers moving.
            self.worker.listener.wait(self.worker.listener.generation, THROTTLE_WAIT_S)
        with inode.lock:
            if handle is not None and handle.append:
                offset = inode.size
            view = memoryview(data)
            position = offset
            while view:
                idx, within = divmod(position, self.chunk_size)
                piece = view[:self.chunk_size - within]
                chunk_file = self._writable_chunk(inode, idx)
                try:
                    written = os.pwrite(chunk_file.fd, piece, within)
                finally:
                    self.files.release(chunk_file)
                inode.leases[idx] = time.monotonic()
                view = view[written:]
                position += written
            if position > inode.size:
                inode.size = position
            inode.mtime_ns = inode.ctime_ns = _now_ns()
            self._mark_unflushed(inode)
        return len(data)

    def _writable_chunk(self, inode: Inode, idx: int):
        """The chunk's descriptor, safe to write through: the lease is held, so
        the worker will not evict it, and the descriptor names the linked file."""
        if idx not in inode.leases:
            self._take_lease(inode, idx)
            chunk_file = self.files.acquire(inode.ino, idx)
            if chunk_file is None or os.fstat(chunk_file.fd).st_nlink == 0:
                if chunk_file is not None:
                    self.files.release(chunk_file)
                chunk_file = self.files.reopen(inode.ino, idx)
            return chunk_file
        chunk_file = self.files.acquire(inode.ino, idx)
        return chunk_file if chunk_file is not None else self.files.reopen(inode.ino, idx)

    def _take_lease(self, inode: Inode, idx: int) -> None:
        while True:
            path = self.cache.chunk_path(inode.ino, idx)
            with self.database.write() as connection:
                # Inside the write transaction a live eviction cannot be half-way.
                waiting_on = chunks.take_lease(connection, inode.ino, idx, file_exists=lambda: os.path.exists(path))
            if waiting_on is None:
                inode.leases[idx] = time.monotonic()
                return
            if waiting_on == ChunkState.CLEAN:
                self._wait_eviction_settled(inode.ino, idx)
            else:
                self.worker.wait_local(inode.ino, idx)

    def _eviction_unfinished(self, connection, ino: int, idx: int) -> bool:
        """A clean row whose file is gone: a worker killed between unlinking the file
        and committing `remote` (crash point evict.unlinked). Taking the lease would
        re-create the file empty and lose the rest of the chunk, so the writer must
        wait for the worker's start-up recovery to mark it remote, then fault it in.
        (Inside a write transaction a live eviction cannot be half-way: it holds the lock.)"""
        if os.path.exists(self.cache.chunk_path(ino, idx)):
            return False
        row = chunks.get(connection, ino, idx)
        return row is not None and row.state == ChunkState.CLEAN.value

    def _wait_eviction_settled(self, ino: int, idx: int) -> None:
        """Wait, up to faultInTimeout, until chunk (ino, idx) is no longer clean
        without its file (an eviction committing now, or a killed worker's
        eviction that its restart completes)."""
        deadline = time.monotonic() + self.worker.timeout_s
        while True:
            generation = self.worker.listener.generation
            with self.database.read() as connection:
                if not self._eviction_unfinished(connection, ino, idx):
                    return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerUnavailable(self.worker._why_no_answer(
                    f"finish the interrupted eviction of chunk {idx} of inode {ino}"))
            self.worker.listener.wait(generation, min(remaining, 0.25))

    def _release_leases(self, inode: Inode, indexes=None, persist: bool = False) -> None:
        """Hand chunks to the worker; with ``persist``, write the batched size and
        times in the same transaction (the last close: one commit, not two)."""
        indexes = list(inode.leases if indexes is None else indexes)
        persist = persist and inode.attrs_unflushed and inode.ino in self.inodes
        if not indexes and not persist:
            return
        with self.database.write() as connection:
            if persist:
                self._persist(connection, inode)
            chunks.release_leases(connection, inode.ino, indexes)
        for idx in indexes:
            inode.leases.pop(idx, None)

    @translated
    def truncate(self, path, length, fh=None):
        inode = self._target(path, fh)
        if inode.is_dir:
            raise FuseOSError(errno.EISDIR)
        with inode.lock:
            self._truncate(inode, length)
        if inode.nlink > 1:
            self._invalidate_names(inode, path)

    def _truncate(self, inode: Inode, length: int) -> None:
        now = _now_ns()
        dropped: list[int] = []
        if length < inode.size:
            keep = -(-length // self.chunk_size)
            partial_idx, partial_len = divmod(length, self.chunk_size)
            if partial_len:
                with self.database.read() as connection:
                    exists = chunks.get(connection, inode.ino, partial_idx) is not None
                if exists:
                    chunk_file = self._writable_chunk(inode, partial_idx)
                    try:
                        os.ftruncate(chunk_file.fd, partial_len)
                    finally:
                        self.files.release(chunk_file)
                    inode.leases[partial_idx] = time.monotonic()
            with self.database.write() as connection:
                dropped = chunks.drop_from(connection, inode.ino, keep)
                inode.size, inode.mtime_ns, inode.ctime_ns = length, now, now
                self._persist(connection, inode)
            for idx in dropped:
                inode.leases.pop(idx, None)
            self._delete_chunk_files(inode.ino, dropped)
        else:
            with self.database.write() as connection:
                inode.size, inode.mtime_ns, inode.ctime_ns = length, now, now
                self._persist(connection, inode)

    def _check_disk_space(self) -> None:
        now = time.monotonic()
        if now - self._disk_checked_at > DISK_CHECK_INTERVAL_S:
            self._disk_checked_at = now
            vfs = os.statvfs(self.cache.root)
            self._disk_full = vfs.f_bavail * vfs.f_frsize < self.config.min_free_disk_bytes
            if self._disk_full:
                log.warning("The cache disk has less than %d MiB free; writes fail with 'No space left on "
                            "device' until zero-worker uploads and evicts, or space is freed",
                            self.config.min_free_disk_bytes // 2**20)
        if self._disk_full:
            raise FuseOSError(errno.ENOSPC)

    # --- extended attributes ------------------------------------------------------------

    @translated
    def setxattr(self, path, name, value, options, position=0):
        raw = name.encode("utf-8", "surrogateescape")
        if len(raw) > XATTR_NAME_MAX_BYTES:
            raise FuseOSError(errno.ERANGE)
        if len(value) > XATTR_VALUE_MAX_BYTES:
            raise FuseOSError(errno.E2BIG)
        if raw in ACL_XATTRS:
            raise FuseOSError(errno.EOPNOTSUPP)  # zero does not enforce POSIX ACLs; do not pretend to
        inode = self._resolve(path)
        with self.ns_lock:
            xattrs = self._xattrs(inode)
            if options & XATTR_CREATE and raw in xattrs:
                raise FuseOSError(errno.EEXIST)
            if options & XATTR_REPLACE and raw not in xattrs:
                raise FuseOSError(errno.ENODATA)
            with self.database.write() as connection:
                namespace.set_xattr(connection, inode.ino, raw, bytes(value))
                inode.ctime_ns = _now_ns()
                self._persist(connection, inode)
            xattrs[raw] = bytes(value)

    def _xattrs(self, inode: Inode) -> dict[bytes, bytes]:
        """The inode's xattrs, from memory (fuse is their only writer)."""
        xattrs = inode.xattrs
        if xattrs is None:
            with self.database.read() as connection:
                xattrs = namespace.all_xattrs(connection, inode.ino)
            inode.xattrs = xattrs
        return xattrs

    @translated
    def getxattr(self, path, name, position=0):
        raw = name.encode("utf-8", "surrogateescape")
        value = self._xattrs(self._resolve(path)).get(raw)
        if value is None:
            raise FuseOSError(errno.ENODATA)
        return value

    @translated
    def listxattr(self, path):
        names = sorted(self._xattrs(self._resolve(path)))
        return [name.decode("utf-8", "surrogateescape") for name in names]

    @translated
    def removexattr(self, path, name):
        raw = name.encode("utf-8", "surrogateescape")
        inode = self._resolve(path)
        with self.ns_lock:
            xattrs = self._xattrs(inode)
            if raw not in xattrs:
                raise FuseOSError(errno.ENODATA)
            with self.database.write() as connection:
                namespace.remove_xattr(connection, inode.ino, raw)
                inode.ctime_ns = _now_ns()
                self._persist(connection, inode)
            del xattrs[raw]

    # --- the filesystem as a whole -------------------------------------------------------

    @translated
    def statfs(self, path):
        block = 4096
        capacity = max(self.config.capacity_bytes, self._used_bytes)
        free = max(capacity - self._used_bytes, 0)
        total_inodes = 2**40
        return {
            "f_bsize": block, "f_frsize": block,
            "f_blocks": capacity // block, "f_bfree": free // block, "f_bavail": free // block,
            "f_files": total_inodes, "f_ffree": total_inodes - self._inode_count,
            "f_favail": total_inodes - self._inode_count, "f_namemax": NAME_MAX_BYTES,
        }

    # --- batching -----------------------------------------------------------------------

    def _mark_unflushed(self, inode: Inode) -> None:
        if not inode.attrs_unflushed:
            inode.attrs_unflushed = True
            self._unflushed.add(inode.ino)

    def flush_everything(self) -> None:
        """Write batched sizes, times and access times in one transaction."""
        accesses, self._accesses = self._accesses, {}
        with self.ns_lock:
            pending = [self.inodes[ino] for ino in list(self._unflushed) if ino in self.inodes]
        if not accesses and not pending:
            return
        with self.database.write() as connection:
            chunks.record_access(connection, accesses)
            for inode in pending:
                self._persist(connection, inode)

    def _release_quiet_leases(self) -> None:
        """Chunks nobody wrote for uploadDelay go to the worker even while
        their file stays open (logs, databases, VM images)."""
        quiet_s = THROTTLE_QUIET_S if self._dirty_over_target else self.config.upload_delay_s
        quiet_before = time.monotonic() - quiet_s
        released = False
        with self.ns_lock:
            inodes = [inode for inode in self.inodes.values() if inode.leases]
        for inode in inodes:
            with inode.lock:
                quiet = [idx for idx, at in inode.leases.items() if at <= quiet_before]
                if quiet:
                    self._release_leases(inode, quiet, persist=True)
                    released = True
        if released:
            self.worker.wake_worker()

    def _measure_dirty(self) -> None:
        """Dirty data alone over the target: slow writers down until the worker catches up."""
        with self.database.read() as connection:
            rows = chunks.unuploaded(connection)
        total = 0
        for ino, idx in rows:
            try:
                total += os.stat(self.cache.chunk_path(ino, idx)).st_blocks * 512
            except FileNotFoundError:
                pass
        self.dirty_bytes = total
        over = total > self.config.target_disk_usage_bytes
        if over != self._dirty_over_target:
            if over:
                log.info("Unuploaded data (%d MiB) exceeds targetDiskUsage (%d MiB): slowing writers until "
                         "zero-worker catches up", total >> 20, self.config.target_disk_usage_bytes >> 20)
            else:
                log.info("Unuploaded data is back under targetDiskUsage: writing at full speed")
        self._dirty_over_target = over

    def _refresh_totals(self) -> None:
        with self.database.read() as connection:
            totals = namespace.totals(connection)
        self._used_bytes = totals["logical_bytes"]
        self._inode_count = totals["inodes"]

    def _flush_loop(self) -> None:
        ticks = 0
        while not self._stop.wait(FLUSH_INTERVAL_S):
            try:
                self.flush_everything()
                self.files.drop_unlinked()  # let evicted chunks' disk space go
                self._measure_dirty()
                self._release_quiet_leases()
                ticks += 1
                if ticks % 10 == 0:
                    self._refresh_totals()
            except Exception:  # keep batching alive; the next tick retries
                log.exception("Background flush failed; retrying in %.0fs", FLUSH_INTERVAL_S)
