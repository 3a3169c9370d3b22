"""Creating and removing names: mkdir, mknod, symlink, link, unlink, rmdir,
rename (with RENAME_NOREPLACE and RENAME_EXCHANGE), and libfuse's hidden
names for files unlinked while open. Each change is one transaction,
checked and applied under the tree's lock."""

from __future__ import annotations

import contextlib
import errno
import stat
import time
from types import SimpleNamespace

from zero.fuse.binding import FuseOSError, fuse_get_context
from zero.fuse.inodes import Inode
from zero.fuse.translate import split
from zero.fuse.tree import HIDDEN_PREFIX, Tree, now_ns
from zero.state import chunks, namespace

RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


class Names:
    def __init__(self, tree: Tree, admit_new_name):
        self.tree = tree
        self.database = tree.database
        self.admit_new_name = admit_new_name  # raises ENOSPC when the state has no headroom left

    # --- creating ------------------------------------------------------------------------

    def make(self, path: str, mode: int, rdev: int, target: bytes | None, lease_first_chunk: bool = False) -> Inode:
        """Create a name and its inode in one commit. With ``lease_first_chunk``
        (a file created for writing) that commit also takes the write lease of
        its first chunk, so a small file's first write costs no commit of its own."""
        uid, gid, _ = fuse_get_context()
        self.admit_new_name()
        tree = self.tree
        with tree.lock:
            parent, name = tree.parent_and_name(path)
            entries = tree.entries(parent.ino)
            if name in entries:
                raise FuseOSError(errno.EEXIST)
            if parent.mode & stat.S_ISGID:
                gid = parent.gid  # as ext4: a set-group-id directory hands down its group
                if stat.S_ISDIR(mode):
                    mode |= stat.S_ISGID
            now = now_ns()
            attrs = dict(mode=mode, uid=uid, gid=gid, nlink=2 if stat.S_ISDIR(mode) else 1, size=len(target or b""),
                         atime_ns=now, mtime_ns=now, ctime_ns=now, rdev=rdev)
            with tree.changing(parent) as connection:
                ino = namespace.insert_inode(connection, target=target, **attrs)
                namespace.insert_dentry(connection, parent.ino, name, ino)
                if lease_first_chunk:
                    chunks.lease_new_chunk(connection, ino, 0)
                if stat.S_ISDIR(mode):
                    parent.nlink += 1
                tree.touch_dir(connection, parent, now)
            inode = Inode(SimpleNamespace(ino=ino, target=target, **attrs))  # what was inserted: no read back
            inode.xattrs = {}  # new: none yet
            if lease_first_chunk:
                inode.leases[0] = time.monotonic()
                inode.unwritten = {0}
            entries[name] = ino
            if stat.S_ISDIR(mode):
                tree.children[ino] = {}
            tree.add(inode)
            tree.inode_count += 1
            return inode

    def link(self, target: str, source: str) -> None:
        """Create ``target`` as a new name for the existing ``source``."""
        self.admit_new_name()
        tree = self.tree
        with tree.lock:
            inode = tree.resolve(source)
            if inode.is_dir:
                raise FuseOSError(errno.EPERM)
            parent, name = tree.parent_and_name(target)
            entries = tree.entries(parent.ino)
            if name in entries:
                raise FuseOSError(errno.EEXIST)
            now = now_ns()
            with tree.changing(inode, parent) as connection:
                namespace.insert_dentry(connection, parent.ino, name, inode.ino)
                inode.nlink += 1
                inode.ctime_ns = now
                tree.persist(connection, inode)
                tree.touch_dir(connection, parent, now)
            entries[name] = inode.ino
        tree.invalidate_names(inode, target)

    # --- removing ----------------------------------------------------------------------------

    def rmdir(self, path: str) -> None:
        tree = self.tree
        with tree.lock:
            parent, name = tree.parent_and_name(path)
            ino = tree.entries(parent.ino).get(name)
            if ino is None:
                raise FuseOSError(errno.ENOENT)
            inode = tree.inode(ino)
            if not inode.is_dir:
                raise FuseOSError(errno.ENOTDIR)
            if tree.entries(ino):
                raise FuseOSError(errno.ENOTEMPTY)
            tree.hidden.pop(ino, None)  # open files of a removed directory live on through their handles
            now = now_ns()
            with tree.changing(parent) as connection:
                namespace.delete_dentry(connection, parent.ino, name)
                namespace.delete_inode(connection, ino)
                parent.nlink -= 1
                tree.touch_dir(connection, parent, now)
            del tree.entries(parent.ino)[name]
            tree.children.pop(ino, None)
            tree.looked_up.pop(ino, None)
            tree.inodes.pop(ino, None)
            inode.nlink = 0

    def unlink(self, path: str) -> None:
        tree = self.tree
        with tree.lock:
            parent, name = tree.parent_and_name(path)
            entries = tree.entries(parent.ino)
            ino = entries.get(name)
            if ino is None:
                hidden_ino = tree.hidden.get(parent.ino, {}).pop(name, None)
                if hidden_ino is None:
                    raise FuseOSError(errno.ENOENT)
                hidden = tree.inodes.get(hidden_ino)
                if hidden is not None:
                    tree.purge_if_unused(hidden)
                return
            inode = tree.inode(ino)
            if inode.is_dir:
                raise FuseOSError(errno.EISDIR)
            now = now_ns()
            # The last name of a file nobody has open (rm -r): delete the inode in
            # the same commit. No handle can appear meanwhile: opens take the tree's lock.
            last = inode.nlink == 1 and inode.open_handles == 0
            with (inode.lock if last else contextlib.nullcontext()), tree.changing(inode, parent) as connection:
                namespace.delete_dentry(connection, parent.ino, name)
                tree.drop_link(connection, inode, now)
                tree.touch_dir(connection, parent, now)
                if last:
                    indexes = namespace.delete_inode(connection, inode.ino)
            del entries[name]
            if last:
                tree.forget(inode)
        if last:
            tree.files.delete_later(inode.ino, indexes)
            return
        if inode.nlink > 0:
            tree.invalidate_names(inode)
        tree.purge_if_unused(inode)

    # --- rename ----------------------------------------------------------------------------

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise FuseOSError(errno.EINVAL)
        if split(new)[1].startswith(HIDDEN_PREFIX) and not flags:
            return self._hide(old, new)
        tree = self.tree
        replaced = None
        with tree.lock:
            old_parent, old_name = tree.parent_and_name(old)
            new_parent, new_name = tree.parent_and_name(new)
            old_entries = tree.entries(old_parent.ino)
            new_entries = tree.entries(new_parent.ino)
            ino = old_entries.get(old_name)
            if ino is None:
                raise FuseOSError(errno.ENOENT)
            moving = tree.inode(ino)
            target_ino = new_entries.get(new_name)
            target = tree.inode(target_ino) if target_ino is not None else None
            self._check_rename(flags, moving, target, old_parent, new_parent)
            if target is not None and target.ino == moving.ino:
                return  # two names of one inode: POSIX says do nothing
            now = now_ns()
            with tree.changing(old_parent, new_parent, moving, target) as connection:
                if flags & RENAME_EXCHANGE:
                    namespace.repoint_dentry(connection, old_parent.ino, old_name, target.ino)
                    namespace.repoint_dentry(connection, new_parent.ino, new_name, moving.ino)
                    if old_parent is not new_parent:
                        shift = int(moving.is_dir) - int(target.is_dir)
                        old_parent.nlink -= shift
                        new_parent.nlink += shift
                    target.ctime_ns = now
                    tree.persist(connection, target)
                else:
                    if target is not None:
                        namespace.delete_dentry(connection, new_parent.ino, new_name)
                        if target.is_dir:
                            namespace.delete_inode(connection, target.ino)
                            new_parent.nlink -= 1
                            target.nlink = 0
                        else:
                            tree.drop_link(connection, target, now)
                            replaced = target
                    namespace.delete_dentry(connection, old_parent.ino, old_name)
                    namespace.insert_dentry(connection, new_parent.ino, new_name, moving.ino)
                    if moving.is_dir and old_parent is not new_parent:
                        old_parent.nlink -= 1
                        new_parent.nlink += 1
                moving.ctime_ns = now
                tree.persist(connection, moving)
                tree.touch_dir(connection, old_parent, now)
                if new_parent is not old_parent:
                    tree.touch_dir(connection, new_parent, now)
            if flags & RENAME_EXCHANGE:
                old_entries[old_name] = target.ino
                new_entries[new_name] = moving.ino
            else:
                del old_entries[old_name]
                new_entries[new_name] = moving.ino
                if target is not None and target.is_dir:
                    tree.children.pop(target.ino, None)
                    tree.looked_up.pop(target.ino, None)
                    tree.inodes.pop(target.ino, None)
        if replaced is not None:
            tree.purge_if_unused(replaced)

    def _check_rename(self, flags: int, moving: Inode, target: Inode | None, old_parent: Inode,
                      new_parent: Inode) -> None:
        """POSIX's refusals, in ext4's order."""
        if flags & RENAME_EXCHANGE:
            if target is None:
                raise FuseOSError(errno.ENOENT)
        elif target is not None and flags & RENAME_NOREPLACE:
            raise FuseOSError(errno.EEXIST)
        if moving.is_dir and self.tree.is_within(new_parent.ino, moving.ino):
            raise FuseOSError(errno.EINVAL)
        if flags & RENAME_EXCHANGE and target.is_dir and self.tree.is_within(old_parent.ino, target.ino):
            raise FuseOSError(errno.EINVAL)
        if target is not None and target.ino == moving.ino:
            return
        if target is not None and not flags & RENAME_EXCHANGE:
            if moving.is_dir and not target.is_dir:
                raise FuseOSError(errno.ENOTDIR)
            if not moving.is_dir and target.is_dir:
                raise FuseOSError(errno.EISDIR)
            if target.is_dir and self.tree.entries(target.ino):
                raise FuseOSError(errno.ENOTEMPTY)

    def _hide(self, old: str, new: str) -> None:
        """libfuse unlinks an open file by renaming it to a .fuse_hidden name and
        unlinking that name at the last close. For zero that rename is the unlink:
        the inode loses the name (nlink drops, as on ext4) and the hidden name
        resolves only for libfuse, never in a listing."""
        tree = self.tree
        with tree.lock:
            parent, name = tree.parent_and_name(old)
            _, hidden_name = tree.parent_and_name(new)
            entries = tree.entries(parent.ino)
            ino = entries.get(name)
            if ino is None:
                raise FuseOSError(errno.ENOENT)
            inode = tree.inode(ino)
            now = now_ns()
            with tree.changing(inode, parent) as connection:
                namespace.delete_dentry(connection, parent.ino, name)
                tree.drop_link(connection, inode, now)
                tree.touch_dir(connection, parent, now)
            del entries[name]
            tree.hidden.setdefault(parent.ino, {})[hidden_name] = ino
        if inode.nlink > 0:
            tree.invalidate_names(inode)  # as unlink: the other names' cached st_nlink is now wrong
