"""zero-fuse keeps at most about ``memory_inodes`` idle inodes in memory (a
million-file namespace must not cost a gigabyte), and lets go of none that
something depends on: an open file, a leased chunk, unflushed attributes, or
an inode a running operation took a moment ago. Were such an inode let go
and loaded again, two objects would stand for one inode and a change made to
the older one would be lost."""

from __future__ import annotations

import errno
import itertools
import stat

import pytest

from zero.fuse.inodes import NO_CHUNKS
from zero.fuse.tree import Tree
from zero.state import db, namespace

CAPACITY = 40
NAMES = itertools.count()
NAMES_OF: dict[int, int] = {}  # ino -> the number in its name


@pytest.fixture
def tree(tmp_path):
    database = db.open_database(tmp_path / "state.sqlite3", 65536)
    yield Tree(database, files=None, kernel_cache=None, memory_inodes=CAPACITY)
    database.dispose()


def new_files(tree: Tree, count: int) -> list[int]:
    inos = []
    with tree.database.write() as connection:
        for i in range(count):
            ino = namespace.insert_inode(connection, mode=stat.S_IFREG | 0o600, uid=0, gid=0, nlink=1, size=i,
                                         atime_ns=1, mtime_ns=1, ctime_ns=1, rdev=0)
            NAMES_OF[ino] = next(NAMES)
            namespace.insert_dentry(connection, namespace.ROOT_INO, f"f{NAMES_OF[ino]}".encode(), ino)
            inos.append(ino)
    return inos


def take(tree: Tree, ino: int):
    """One short operation that takes the inode, as a getattr would."""
    started = tree.operation_started()
    try:
        return tree.inode(ino)
    finally:
        tree.operation_ended(started)


def test_idle_inodes_beyond_the_bound_are_let_go_and_read_back_unchanged(tree):
    inos = new_files(tree, 5 * CAPACITY)
    for ino in inos:
        # The sweep a load sets off must not take the inode just loaded: the caller
        # would change an object memory no longer holds.
        taken = take(tree, ino)
        assert tree.inodes.get(ino) is taken
    assert len(tree.inodes) <= CAPACITY + 1  # the root stays
    first = take(tree, inos[0])  # let go long ago: loaded again from its row
    assert first.size == 0 and stat.S_IMODE(first.mode) == 0o600
    assert take(tree, inos[-1]).size == len(inos) - 1


def test_the_least_recently_used_go_first(tree):
    inos = new_files(tree, CAPACITY)
    for ino in inos:
        take(tree, ino)
    kept = take(tree, inos[0])  # used again: now the newest
    for ino in new_files(tree, CAPACITY // 2):
        take(tree, ino)
    assert tree.inodes.get(inos[0]) is kept
    assert inos[1] not in tree.inodes


def test_inodes_something_depends_on_stay(tree):
    inos = new_files(tree, 4)
    opened, leased, unflushed, unwritten = (take(tree, ino) for ino in inos)
    opened.open_handles = 1
    leased.leases[0] = 1.0
    unflushed.mode = stat.S_IFREG | 0o644
    tree.mark_unflushed(unflushed)
    unwritten.unwritten = {0}
    hidden = take(tree, new_files(tree, 1)[0])  # unlinked while open, its last handle just closed:
    tree.hidden[namespace.ROOT_INO] = {b".fuse_hidden0001": hidden.ino}  # libfuse's unlink of this name purges it
    for ino in new_files(tree, 5 * CAPACITY):
        take(tree, ino)
    for inode in (opened, leased, unflushed, unwritten, hidden):
        assert tree.inodes.get(inode.ino) is inode


def test_idle_inodes_share_one_empty_set_of_unwritten_chunks_and_never_change_it(tree):
    """An empty set is a quarter of an idle inode's memory, so idle inodes share
    a frozen one; a chunk leased in advance gives its inode a set of its own."""
    created, idle = (take(tree, ino) for ino in new_files(tree, 2))
    assert created.unwritten is idle.unwritten is NO_CHUNKS
    created.unwritten = {0}  # as Names.create leases a new file's first chunk
    idle.written(0)
    assert created.unwritten == {0} and not NO_CHUNKS
    created.written(0)
    assert created.unwritten is NO_CHUNKS and not NO_CHUNKS
    tree.forget(created)
    assert created.unwritten is NO_CHUNKS and not NO_CHUNKS


def test_an_inode_a_running_operation_took_stays_until_it_ends(tree):
    inos = new_files(tree, 3 * CAPACITY)
    running = tree.operation_started()
    held = tree.inode(inos[0])  # taken, not yet changed: a chmod between resolve and commit
    for ino in inos[1:]:
        take(tree, ino)
    assert tree.inodes.get(inos[0]) is held, "let go while an operation held it: a second object would follow"
    tree.operation_ended(running)
    for ino in new_files(tree, 2 * CAPACITY):
        take(tree, ino)
    assert inos[0] not in tree.inodes  # once the operation ended it is idle like any other


def test_an_inode_taken_through_a_handle_by_a_running_operation_stays(tree):
    inos = new_files(tree, 3 * CAPACITY)
    handle_inode = take(tree, inos[0])
    handle_inode.open_handles = 1
    running = tree.operation_started()
    tree.use(handle_inode)  # release(): the handle goes, the operation still works on the inode
    handle_inode.open_handles = 0
    for ino in inos[1:]:
        take(tree, ino)
    assert tree.inodes.get(inos[0]) is handle_inode
    tree.operation_ended(running)


def test_an_inode_looked_up_by_name_when_memory_is_full_is_the_one_memory_holds(tree):
    inos = new_files(tree, 3 * CAPACITY)
    for i, ino in enumerate(inos):
        started = tree.operation_started()
        found = tree.resolve(f"/f{NAMES_OF[ino]}")
        tree.operation_ended(started)
        assert found.ino == ino and tree.inodes.get(ino) is found, f"lookup {i}"


def test_a_directory_lets_its_listing_go_with_it_and_reads_it_back(tree):
    tree._count_every = 10 ** 9  # no periodic recount: the estimate follows loads and sweeps alone
    with tree.database.write() as connection:
        folder = namespace.insert_inode(connection, mode=stat.S_IFDIR | 0o755, uid=0, gid=0, nlink=2, size=0,
                                        atime_ns=1, mtime_ns=1, ctime_ns=1, rdev=0)
        namespace.insert_dentry(connection, namespace.ROOT_INO, b"folder", folder)
        child = namespace.insert_inode(connection, mode=stat.S_IFREG | 0o600, uid=0, gid=0, nlink=1, size=0,
                                       atime_ns=1, mtime_ns=1, ctime_ns=1, rdev=0)
        namespace.insert_dentry(connection, folder, b"child", child)
    started = tree.operation_started()
    assert tree.resolve("/folder/child").ino == child
    assert folder not in tree.children  # a lookup reads one row, not the listing
    assert tree.entries(folder) == {b"child": child}
    tree.operation_ended(started)
    for ino in new_files(tree, 3 * CAPACITY):
        take(tree, ino)
    assert folder not in tree.inodes and folder not in tree.children
    # The names that went with it no longer count towards the listings' bound.
    assert tree._listed_estimate == sum(map(len, tree.children.values())) + sum(map(len, tree.looked_up.values()))
    started = tree.operation_started()
    assert tree.resolve("/folder/child").ino == child
    tree.operation_ended(started)


def test_when_most_inodes_are_in_use_a_sweep_does_not_run_on_every_load(tree, monkeypatch):
    inos = new_files(tree, 3 * CAPACITY)
    for ino in inos[:CAPACITY]:
        take(tree, ino).open_handles = 1  # all open: none can go
    sweeps = []
    real_idle = tree._idle
    monkeypatch.setattr(tree, "_idle", lambda inode: sweeps.append(inode.ino) or real_idle(inode))
    for ino in inos[CAPACITY:CAPACITY + CAPACITY // 4]:
        take(tree, ino)
    looked_at = len(sweeps)
    assert looked_at <= 2 * CAPACITY, f"{looked_at} idleness checks for {CAPACITY // 4} loads"


def test_an_inode_flushed_but_not_yet_committed_stays(tree):
    """persist() marks an inode flushed inside the transaction; let go before the
    commit, it would be read back with the old row and the change lost from memory."""
    inos = new_files(tree, 3 * CAPACITY)
    inode = take(tree, inos[0])
    inode.mode = stat.S_IFREG | 0o644
    tree.mark_unflushed(inode)
    with tree.changing(inode) as connection:  # the flusher's batch, outside any FUSE operation
        tree.persist(connection, inode)
        assert not inode.attrs_unflushed
        for ino in inos[1:]:
            take(tree, ino)
        assert tree.inodes.get(inode.ino) is inode
    assert stat.S_IMODE(take(tree, inode.ino).mode) == 0o644


def new_folder_of(tree: Tree, files: int) -> tuple[int, list[bytes]]:
    """A folder under the root holding ``files`` files, written as zero-fuse commits them."""
    with tree.database.write() as connection:
        folder = namespace.insert_inode(connection, mode=stat.S_IFDIR | 0o755, uid=0, gid=0, nlink=2, size=0,
                                        atime_ns=1, mtime_ns=1, ctime_ns=1, rdev=0)
        namespace.insert_dentry(connection, namespace.ROOT_INO, f"d{next(NAMES)}".encode(), folder)
        names = []
        for _ in range(files):
            ino = namespace.insert_inode(connection, mode=stat.S_IFREG | 0o600, uid=0, gid=0, nlink=1, size=0,
                                         atime_ns=1, mtime_ns=1, ctime_ns=1, rdev=0)
            names.append(f"f{next(NAMES)}".encode())
            namespace.insert_dentry(connection, folder, names[-1], ino)
    return folder, names


def listed(tree: Tree) -> int:
    return sum(map(len, tree.children.values())) + sum(map(len, tree.looked_up.values()))


def list_folder(tree: Tree, folder: int) -> list[bytes]:
    """One readdir: an operation that takes the folder and reads its listing."""
    started = tree.operation_started()
    try:
        return [name for name, _ino, _mode in tree.listing(tree.inode(folder))]
    finally:
        tree.operation_ended(started)


def test_a_walk_of_many_folders_keeps_a_bounded_number_of_names_and_finds_every_one(tree):
    folders = [new_folder_of(tree, 30) for _ in range(20)]  # 600 names against a bound of 80
    for folder, names in folders:
        assert sorted(list_folder(tree, folder)) == sorted(names)
        # Folders used a moment ago keep theirs: bounded, not growing with the walk.
        assert listed(tree) <= 2 * tree.listed_names, "a walk kept every folder's listing"
    for folder, names in folders:  # listings let go: each name is asked of the state
        for name in names:
            started = tree.operation_started()
            try:
                assert tree.lookup(folder, name) is not None, name
                assert tree.lookup(folder, name + b"-missing") is None
            finally:
                tree.operation_ended(started)
    assert listed(tree) <= 2 * tree.listed_names


def test_a_listing_let_go_comes_back_whole_with_what_was_committed_since(tree):
    folder, names = new_folder_of(tree, 30)
    list_folder(tree, folder)
    for other, _ in [new_folder_of(tree, 30) for _ in range(5)]:
        list_folder(tree, other)
    assert folder not in tree.children, "the oldest listing should have been let go"
    with tree.database.write() as connection:  # a create, committed while the listing was out of memory
        ino = namespace.insert_inode(connection, mode=stat.S_IFREG | 0o600, uid=0, gid=0, nlink=1, size=0,
                                     atime_ns=1, mtime_ns=1, ctime_ns=1, rdev=0)
        namespace.insert_dentry(connection, folder, b"made-later", ino)
    with tree.lock:
        assert set(tree.entries(folder)) == set(names) | {b"made-later"}


def test_the_listing_of_a_folder_a_running_operation_took_is_never_let_go(tree):
    held, held_names = new_folder_of(tree, 30)
    started = tree.operation_started()
    try:
        with tree.lock:
            tree.use(tree.inode(held))
            held_listing = tree.entries(held)
            for other, _ in [new_folder_of(tree, 30) for _ in range(6)]:
                tree.entries(other)  # other folders' listings, loaded while this operation runs
            assert tree.children.get(held) is held_listing, "a listing the operation holds was let go"
            held_listing[b"added-by-the-operation"] = 1
    finally:
        tree.operation_ended(started)
    assert tree.children[held][b"added-by-the-operation"] == 1


@pytest.mark.parametrize("used_between", [True, False])
def test_a_big_folder_keeps_its_listing_while_others_come_and_go(tree, used_between):
    """Reloading a big folder's listing for each change to it would cost a query
    of every name each time (a million-file folder: seconds), used or idle."""
    big, _ = new_folder_of(tree, 3 * tree.listed_names)
    list_folder(tree, big)
    big_listing = tree.children[big]
    for other, _ in [new_folder_of(tree, 10) for _ in range(12)]:
        list_folder(tree, other)
        if used_between:
            list_folder(tree, big)
        assert tree.children.get(big) is big_listing, "the big folder's listing was loaded again"
    assert listed(tree) <= len(big_listing) + tree.listed_names


def test_a_folder_that_once_held_a_hidden_name_is_bounded_like_the_others(tree):
    """An unlinked-while-open file's hidden name leaves an empty entry in
    tree.hidden once it goes; that folder's listing must not stay for good."""
    folder, _ = new_folder_of(tree, 30)
    list_folder(tree, folder)
    tree.hidden[folder] = {}
    for other, _ in [new_folder_of(tree, 30) for _ in range(8)]:
        list_folder(tree, other)
    assert folder not in tree.children


def test_names_change_right_in_folders_whose_listings_were_let_go(tree, monkeypatch):
    """Creates, renames across folders and removals through Names, each in a
    folder whose listing went: what the state holds afterwards is what memory says."""
    from zero.fuse import names as names_module
    monkeypatch.setattr(names_module, "fuse_get_context", lambda: (0, 0, 0))
    names = names_module.Names(tree, admit_new_name=lambda: None)
    made = [new_folder_of(tree, 30) for _ in range(6)]
    paths = {}
    with tree.database.read() as connection:
        for folder, _ in made:
            paths[folder] = namespace.path_of(connection, folder).decode()

    def run(operation, *args):
        started = tree.operation_started()
        try:
            return operation(*args)
        finally:
            tree.operation_ended(started)

    def let_listings_go():
        for other, _ in [new_folder_of(tree, 30) for _ in range(5)]:
            list_folder(tree, other)
        assert not any(folder in tree.children for folder, _ in made)

    (first, first_names), (second, second_names) = made[0], made[1]
    for folder, _ in made:
        list_folder(tree, folder)
    let_listings_go()
    with pytest.raises(names_module.FuseOSError) as refused:
        run(names.make, f"{paths[first]}/{first_names[0].decode()}", stat.S_IFREG | 0o644, 0, None)
    assert refused.value.errno == errno.EEXIST
    run(names.make, f"{paths[first]}/new", stat.S_IFREG | 0o644, 0, None)
    let_listings_go()
    run(names.rename, f"{paths[first]}/new", f"{paths[second]}/moved")
    run(names.make, f"{paths[second]}/sub", stat.S_IFDIR | 0o755, 0, None)
    let_listings_go()
    run(names.rmdir, f"{paths[second]}/sub")
    with tree.database.read() as connection:
        in_first = {name for name, _ino, _mode in namespace.list_entries(connection, first)}
        in_second = {name for name, _ino, _mode in namespace.list_entries(connection, second)}
    assert in_first == set(first_names)
    assert in_second == set(second_names) | {b"moved"}
    with tree.lock:
        assert set(tree.entries(first)) == in_first and set(tree.entries(second)) == in_second
