"""zero-fuse batches attribute changes (sizes and times from writes; chmod, chown,
utimens) and the flusher writes them later. A change that lands while the flusher
is writing an older value must stay marked for the next batch: else memory and the
state disagree, and after a clean unmount the file has the older mode or size.
(Seen as `cp -a` leaving a file 0600 after a remount: cp creates it 0600, then
fchmods it while the flusher was persisting the create's times.)"""

from __future__ import annotations

import stat

import pytest

from zero.fuse import tree as tree_module
from zero.fuse.tree import Tree
from zero.state import db, namespace


@pytest.fixture
def tree(tmp_path):
    database = db.open_database(tmp_path / "state.sqlite3", 65536)
    yield Tree(database, files=None, kernel_cache=None)
    database.dispose()


def new_file(tree: Tree) -> int:
    with tree.database.write() as connection:
        ino = namespace.insert_inode(connection, mode=stat.S_IFREG | 0o600, uid=0, gid=0, nlink=1, size=0,
                                     atime_ns=1, mtime_ns=1, ctime_ns=1, rdev=0)
        namespace.insert_dentry(connection, namespace.ROOT_INO, b"f", ino)
    return ino


def stored_mode(tree: Tree, ino: int) -> int:
    with tree.database.read() as connection:
        return namespace.get_inode(connection, ino).mode


def test_a_change_made_while_the_flusher_writes_stays_marked_for_the_next_batch(tree, monkeypatch):
    inode = tree.inode(new_file(tree))
    inode.mtime_ns = 5
    tree.mark_unflushed(inode)
    real_update = namespace.update_inode

    def update_then_chmod(connection, ino, **attrs):
        real_update(connection, ino, **attrs)  # the flusher wrote mode 0600 ...
        inode.mode = stat.S_IFREG | 0o644      # ... and a chmod lands before it marks the inode clean
        tree.mark_unflushed(inode)

    monkeypatch.setattr(tree_module.namespace, "update_inode", update_then_chmod)
    with tree.database.write() as connection:
        tree.persist(connection, inode)
    monkeypatch.setattr(tree_module.namespace, "update_inode", real_update)

    assert inode.ino in tree.unflushed and inode.attrs_unflushed, "the chmod was marked flushed but never written"
    with tree.database.write() as connection:
        for ino in list(tree.unflushed):
            tree.persist(connection, tree.inodes[ino])
    assert stat.S_IMODE(stored_mode(tree, inode.ino)) == 0o644
    assert not tree.unflushed
