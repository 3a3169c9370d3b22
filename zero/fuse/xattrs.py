"""Extended attributes, cached per inode: the kernel asks for
security.capability before every write, so a lookup must not cost a
database read. Limits as on Linux; POSIX ACLs are refused (zero does not
enforce them, and storing them would pretend it does)."""

from __future__ import annotations

import errno

from zero.fuse.binding import FuseOSError
from zero.fuse.inodes import Inode
from zero.fuse.tree import Tree, now_ns
from zero.state import namespace

XATTR_NAME_MAX_BYTES = 255
XATTR_VALUE_MAX_BYTES = 64 * 1024
XATTR_CREATE, XATTR_REPLACE = 1, 2
ACL_XATTRS = (b"system.posix_acl_access", b"system.posix_acl_default")


def _raw(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


class Xattrs:
    def __init__(self, tree: Tree):
        self.tree = tree
        self.database = tree.database

    def of(self, inode: Inode) -> dict[bytes, bytes]:
        """The inode's xattrs, from memory (fuse is their only writer)."""
        xattrs = inode.xattrs
        if xattrs is None:
            with self.database.read() as connection:
                xattrs = namespace.all_xattrs(connection, inode.ino)
            inode.xattrs = xattrs
        return xattrs

    @staticmethod
    def check_settable(name: str, value: bytes) -> None:
        """Refusals that come before the path is looked at, as on Linux."""
        raw = _raw(name)
        if len(raw) > XATTR_NAME_MAX_BYTES:
            raise FuseOSError(errno.ERANGE)
        if len(value) > XATTR_VALUE_MAX_BYTES:
            raise FuseOSError(errno.E2BIG)
        if raw in ACL_XATTRS:
            raise FuseOSError(errno.EOPNOTSUPP)

    def set(self, inode: Inode, name: str, value: bytes, options: int) -> None:
        """Call check_settable first."""
        raw = _raw(name)
        with self.tree.lock:
            xattrs = self.of(inode)
            if options & XATTR_CREATE and raw in xattrs:
                raise FuseOSError(errno.EEXIST)
            if options & XATTR_REPLACE and raw not in xattrs:
                raise FuseOSError(errno.ENODATA)
            with self.tree.changing(inode) as connection:
                namespace.set_xattr(connection, inode.ino, raw, bytes(value))
                inode.ctime_ns = now_ns()
                self.tree.persist(connection, inode)
            xattrs[raw] = bytes(value)

    def get(self, inode: Inode, name: str) -> bytes:
        value = self.of(inode).get(_raw(name))
        if value is None:
            raise FuseOSError(errno.ENODATA)
        return value

    def names(self, inode: Inode) -> list[str]:
        return [name.decode("utf-8", "surrogateescape") for name in sorted(self.of(inode))]

    def remove(self, inode: Inode, name: str) -> None:
        raw = _raw(name)
        with self.tree.lock:
            xattrs = self.of(inode)
            if raw not in xattrs:
                raise FuseOSError(errno.ENODATA)
            with self.tree.changing(inode) as connection:
                namespace.remove_xattr(connection, inode.ino, raw)
                inode.ctime_ns = now_ns()
                self.tree.persist(connection, inode)
            del xattrs[raw]
