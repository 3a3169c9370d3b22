"""Real programs on a real mount (issue #2): cp -a, rsync, tar, git, sqlite3,
Python's sqlite3 and mmap, through the real zero-fuse command with a worker.
Each program's result is compared with the source tree it came from (diff -r
plus modes, nanosecond mtimes, symlink targets, hard links and xattrs)."""

from __future__ import annotations

import hashlib
import mmap
import os
import re
import sqlite3
import stat
import subprocess
from pathlib import Path

MIB = 1024 * 1024
CHUNK = 256 * 1024  # chunkSize="256KiB": a few MiB already spans many chunks

NON_UTF8_NAME = b"caf\xe9-latin1.txt"  # not valid UTF-8: names are bytes
BASE_MTIME_NS = 1_600_000_000_123_456_789  # 2020-09-13, with all nine digits of nanoseconds


# --- helpers -------------------------------------------------------------------------------------


def run(args, **kwargs) -> subprocess.CompletedProcess:
    """Run a program; fail with its output when it exits non-zero."""
    result = subprocess.run([str(a) if isinstance(a, Path) else a for a in args], capture_output=True, **kwargs)
    assert result.returncode == 0, (
        f"{' '.join(map(str, args))} exited with {result.returncode}\n"
        f"stdout:\n{_text(result.stdout)}\nstderr:\n{_text(result.stderr)}")
    return result


def _text(data) -> str:
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return data or ""


def mount_for(make_mount, **config):
    return make_mount(worker=True, chunkSize="256KiB", **config)


def write_bytes(path, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def build_tree(root: Path, xattrs: bool = False, files_per_dir: int = 8) -> None:
    """A source tree with the things copy programs get wrong: nested
    directories, a couple of hundred small files, files spanning several chunks, a
    sparse file, an empty file, a symlink (and a dangling one), a hard-link
    pair, a name that is not UTF-8, unusual modes and nanosecond mtimes."""
    root.mkdir()
    seed = 0
    for top in range(4):
        for sub in range(5):
            folder = root / f"dir{top}" / f"sub{sub}" / "deep"
            folder.mkdir(parents=True)
            for i in range(files_per_dir):
                seed += 1
                data = hashlib.sha256(str(seed).encode()).digest() * (seed % 40 + 1)
                write_bytes(folder / f"file{i}.txt", data)
                if i % 4 == 0:
                    write_bytes(folder.parent / f"mid{i}.bin", data[::-1])
    # Files spanning chunks: one of 1 MiB + 17 bytes, one of exactly 2 chunks.
    write_bytes(root / "big.bin", os.urandom(MIB + 17))
    write_bytes(root / "two-chunks.bin", os.urandom(2 * CHUNK))
    # Sparse-ish: data at the start, a hole over two chunks, data at the end.
    fd = os.open(root / "sparse.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"head" * 1000, 0)
        os.pwrite(fd, b"tail" * 1000, 3 * CHUNK + 100)
    finally:
        os.close(fd)
    write_bytes(root / "empty", b"")
    write_bytes(root / "secret", b"only the owner\n", 0o600)
    os.chmod(root / "secret", 0o600)
    write_bytes(root / "script.sh", b"#!/bin/sh\necho hello\n", 0o755)
    os.chmod(root / "script.sh", 0o755)
    write_bytes(root / "setgid-ish", b"odd mode\n")
    os.chmod(root / "setgid-ish", 0o2751)
    os.mkdir(root / "private")
    write_bytes(root / "private" / "inside", b"x\n")
    os.chmod(root / "private", 0o700)
    write_bytes(os.path.join(os.fsencode(root), NON_UTF8_NAME), b"latin-1 name\n")
    os.mkdir(os.path.join(os.fsencode(root), b"dir-\xff\xfe"))
    write_bytes(root / "dir0" / "sub0" / "linked-a", b"one inode, two names\n")
    os.link(root / "dir0" / "sub0" / "linked-a", root / "dir1" / "linked-b")
    os.symlink("../big.bin", root / "dir2" / "link-to-big")
    os.symlink("nowhere/at/all", root / "dangling")
    os.symlink("dir3/sub1", root / "link-to-dir")
    if xattrs:
        os.setxattr(root / "big.bin", "user.colour", b"blue")
        os.setxattr(root / "dir0", "user.dir-note", b"on a directory")
        os.setxattr(root / "dir0" / "sub0" / "linked-a", "user.binary", bytes(range(256)))
        os.setxattr(root / "empty", "user.empty-value", b"")
    # Times last, deepest first, so creating entries does not move them again.
    for index, path in enumerate(sorted(all_paths(root), key=lambda p: -p.count(b"/"))):
        full = os.path.join(os.fsencode(root), path)
        when = BASE_MTIME_NS + index * 1_000_001_337
        os.utime(full, ns=(when + 7, when), follow_symlinks=False)
    os.utime(root, ns=(BASE_MTIME_NS, BASE_MTIME_NS))


def all_paths(root: Path) -> list[bytes]:
    """Every path below root, relative, as bytes (names need not be UTF-8)."""
    base = os.fsencode(root)
    found = []
    for folder, dirs, files in os.walk(base):
        for name in dirs + files:
            found.append(os.path.relpath(os.path.join(folder, name), base))
    return found


def snapshot(root: Path, with_xattrs: bool = False) -> dict:
    """What a faithful copy must keep, per relative path; hard links as groups."""
    base = os.fsencode(root)
    entries = {}
    by_inode: dict[int, list[bytes]] = {}
    for rel in sorted(all_paths(root)):
        full = os.path.join(base, rel)
        st = os.lstat(full)
        entry = {"type": stat.S_IFMT(st.st_mode), "mode": stat.S_IMODE(st.st_mode), "mtime_ns": st.st_mtime_ns}
        if stat.S_ISLNK(st.st_mode):
            entry["target"] = os.readlink(full)
        elif stat.S_ISREG(st.st_mode):
            entry["size"] = st.st_size
            entry["nlink"] = st.st_nlink
            by_inode.setdefault(st.st_ino, []).append(rel)
        if with_xattrs and not stat.S_ISLNK(st.st_mode):
            entry["xattrs"] = {name: os.getxattr(full, name) for name in sorted(os.listxattr(full))
                               if name.startswith("user.")}
        entries[rel] = entry
    entries[b"<hard-link groups>"] = sorted(sorted(group) for group in by_inode.values() if len(group) > 1)
    return entries


def assert_same_tree(source: Path, copy: Path, what: str, with_xattrs: bool = False) -> None:
    diff = subprocess.run(["diff", "-r", "--no-dereference", str(source), str(copy)], capture_output=True)
    assert diff.returncode == 0, (f"{what}: diff -r found differences ({diff.returncode}):\n"
                                  f"{_text(diff.stdout)[:4000]}\n{_text(diff.stderr)[:2000]}")
    expected, got = snapshot(source, with_xattrs), snapshot(copy, with_xattrs)
    assert got.keys() == expected.keys(), (f"{what}: names differ: missing {sorted(expected.keys() - got.keys())}, "
                                           f"extra {sorted(got.keys() - expected.keys())}")
    wrong = {path: (expected[path], got[path]) for path in expected if expected[path] != got[path]}
    assert not wrong, f"{what}: metadata differs (expected, got):\n" + "\n".join(
        f"  {path!r}: {pair[0]} != {pair[1]}" for path, pair in list(wrong.items())[:20])


def assert_hard_link_pair(tree: Path, what: str) -> None:
    a, b = os.stat(tree / "dir0" / "sub0" / "linked-a"), os.stat(tree / "dir1" / "linked-b")
    assert a.st_ino == b.st_ino, f"{what}: the two names of the hard link have different inodes {a.st_ino}, {b.st_ino}"
    assert a.st_nlink == b.st_nlink == 2, f"{what}: hard-linked file shows nlink {a.st_nlink}/{b.st_nlink}, not 2"


# --- cp, rsync, tar --------------------------------------------------------------------------------


def test_cp_a_into_the_mount_keeps_everything(make_mount, tmp_path):
    m = mount_for(make_mount)
    source = tmp_path / "source"
    build_tree(source)
    run(["cp", "-a", source, m.mnt / "copy"])
    assert_same_tree(source, m.mnt / "copy", "cp -a into the mount")
    assert_hard_link_pair(m.mnt / "copy", "cp -a into the mount")
    # And again after a remount, from zero's state rather than the kernel's caches.
    m.unmount()
    m.start_fuse()
    assert_same_tree(source, m.mnt / "copy", "cp -a into the mount, after a remount")
    assert_hard_link_pair(m.mnt / "copy", "cp -a into the mount, after a remount")
    # cp -a out of the mount again.
    run(["cp", "-a", m.mnt / "copy", tmp_path / "back"])
    assert_same_tree(source, tmp_path / "back", "cp -a out of the mount")


def test_rsync_in_and_out_with_hard_links_and_xattrs(make_mount, tmp_path):
    m = mount_for(make_mount)
    source = tmp_path / "source"
    build_tree(source, xattrs=True)
    # -A stays on: the tree has only the ACLs that the mode bits express, which rsync carries
    # as modes, so -A works on zero; a real ACL is refused (test_rsync_refuses_to_copy_a_real_acl).
    flags = ["-aHAX"]
    run(["rsync", *flags, f"{source}/", f"{m.mnt / 'copy'}/"])
    assert_same_tree(source, m.mnt / "copy", "rsync into the mount", with_xattrs=True)
    assert_hard_link_pair(m.mnt / "copy", "rsync into the mount")
    got = run(["getfattr", "--absolute-names", "-n", "user.colour", "--only-values", m.mnt / "copy" / "big.bin"])
    assert got.stdout == b"blue", f"getfattr on the mount shows {got.stdout!r}, not the xattr rsync copied"

    again = run(["rsync", *flags, "--itemize-changes", f"{source}/", f"{m.mnt / 'copy'}/"])
    assert again.stdout == b"", ("a second rsync into the mount wanted to transfer or fix something "
                                 f"(sizes, mtimes or modes did not stick):\n{_text(again.stdout)}")

    out = tmp_path / "out"
    run(["rsync", *flags, f"{m.mnt / 'copy'}/", f"{out}/"])
    assert_same_tree(source, out, "rsync out of the mount", with_xattrs=True)
    assert_hard_link_pair(out, "rsync out of the mount")
    again = run(["rsync", *flags, "--itemize-changes", f"{m.mnt / 'copy'}/", f"{out}/"])
    assert again.stdout == b"", f"a second rsync out of the mount wanted to transfer something:\n{_text(again.stdout)}"


def test_rsync_refuses_to_copy_a_real_acl(make_mount, tmp_path):
    """zero refuses POSIX ACLs (EOPNOTSUPP) instead of faking them: rsync -A
    says so and exits 23 ("some attributes were not transferred"), and copies
    the data, the mode and the user xattrs all the same."""
    m = mount_for(make_mount)
    source = tmp_path / "source"
    source.mkdir()
    write_bytes(source / "with-acl", b"guarded\n", 0o640)
    os.chmod(source / "with-acl", 0o640)
    os.setxattr(source / "with-acl", "user.kept", b"yes")
    # user::rw- user:nobody:r-- group::r-- mask::r-- other::---  (ext4 under tmp_path stores it)
    acl = (b"\x02\x00\x00\x00" + b"\x01\x00\x06\x00\xff\xff\xff\xff" + b"\x02\x00\x04\x00\xfe\xff\x00\x00"
           + b"\x04\x00\x04\x00\xff\xff\xff\xff" + b"\x10\x00\x04\x00\xff\xff\xff\xff"
           + b"\x20\x00\x00\x00\xff\xff\xff\xff")
    os.setxattr(source / "with-acl", "system.posix_acl_access", acl)
    result = subprocess.run(["rsync", "-aHAX", f"{source}/", f"{m.mnt / 'copy'}/"], capture_output=True)
    stderr = _text(result.stderr)
    assert result.returncode == 23, f"rsync -A of a real ACL exited {result.returncode}, not 23:\n{stderr}"
    assert "set_acl" in stderr and "Operation not supported (95)" in stderr, \
        f"rsync did not report that the mount refused the ACL:\n{stderr}"
    copy = m.mnt / "copy" / "with-acl"
    with open(copy, "rb") as f:
        assert f.read() == b"guarded\n", "rsync did not copy the data of the file whose ACL was refused"
    assert stat.S_IMODE(os.stat(copy).st_mode) == 0o640, f"mode {oct(os.stat(copy).st_mode)} instead of 0o640"
    assert os.getxattr(copy, "user.kept") == b"yes", "the user xattr was lost with the refused ACL"
    assert "system.posix_acl_access" not in os.listxattr(copy), "the mount shows an ACL it said it refused"


def test_tar_out_of_and_into_the_mount(make_mount, tmp_path):
    m = mount_for(make_mount)
    source = tmp_path / "source"
    build_tree(source, xattrs=True)
    # pax format keeps nanosecond mtimes; --xattrs keeps user.* attributes.
    tar_flags = ["--format=posix", "--xattrs", "--xattrs-include=user.*"]

    # Extract a tar into the mount.
    archive = tmp_path / "source.tar"
    run(["tar", "-c", *tar_flags, "-f", archive, "-C", source, "."])
    (m.mnt / "extracted").mkdir()
    run(["tar", "-x", "-p", *tar_flags, "-f", archive, "-C", m.mnt / "extracted"])
    assert_same_tree(source, m.mnt / "extracted", "tar extracted into the mount", with_xattrs=True)
    assert_hard_link_pair(m.mnt / "extracted", "tar extracted into the mount")

    # Create a tar of the tree inside the mount (the archive itself in the mount too) and extract it outside.
    run(["tar", "-c", *tar_flags, "-f", m.mnt / "made-here.tar", "-C", m.mnt / "extracted", "."])
    outside = tmp_path / "outside"
    outside.mkdir()
    run(["tar", "-x", "-p", *tar_flags, "-f", m.mnt / "made-here.tar", "-C", outside])
    assert_same_tree(source, outside, "tar created in the mount, extracted outside", with_xattrs=True)
    assert_hard_link_pair(outside, "tar created in the mount, extracted outside")
    listing = run(["tar", "-t", "-v", "-f", m.mnt / "made-here.tar"]).stdout
    assert b"link to" in listing, f"tar did not record the hard link as a link:\n{_text(listing)[:3000]}"


# --- git ---------------------------------------------------------------------------------------------


def git_env(m) -> dict:
    return dict(m.env, GIT_AUTHOR_NAME="Zero Test", GIT_AUTHOR_EMAIL="zero@example.invalid",
                GIT_COMMITTER_NAME="Zero Test", GIT_COMMITTER_EMAIL="zero@example.invalid",
                GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL="/dev/null", LC_ALL="C")


def test_git_init_add_commit_status_log_fsck(make_mount, tmp_path):
    m = mount_for(make_mount)
    repo = m.mnt / "repo"
    # Written straight into the mount, and smaller: every git object is a create, a link and an unlink.
    build_tree(repo, files_per_dir=4)
    env = git_env(m)

    def git(*args) -> subprocess.CompletedProcess:
        return run(["git", "-C", repo, *args], env=env)

    git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-q", "-m", "first commit")
    status = git("status", "--porcelain", "--untracked-files=all").stdout
    assert status == b"", f"git status is not clean right after the commit:\n{_text(status)}"
    log = git("log", "--oneline").stdout.decode()
    assert re.fullmatch(r"[0-9a-f]{7,} first commit\n", log), f"git log does not show the commit: {log!r}"
    files = git("ls-files", "-z").stdout.split(b"\0")
    assert b"big.bin" in files and b"dir1/linked-b" in files, f"the commit lacks files: {files[:10]}"
    git("fsck", "--full", "--strict")

    # A second commit: modify, add, delete, rename.
    with open(repo / "dir0" / "sub1" / "mid0.bin", "ab") as f:
        f.write(b"appended line\n")
    write_bytes(repo / "new-file.txt", b"brand new\n" * 100)
    os.unlink(repo / "dir3" / "sub4" / "deep" / "file3.txt")
    os.rename(repo / "script.sh", repo / "renamed.sh")
    status = git("status", "--porcelain").stdout.decode()
    for expected in (" M dir0/sub1/mid0.bin", "?? new-file.txt", " D dir3/sub4/deep/file3.txt", " D script.sh",
                     "?? renamed.sh"):
        assert expected in status.splitlines(), f"git status misses {expected!r}:\n{status}"
    git("add", "-A")
    git("commit", "-q", "-m", "second commit")
    assert git("status", "--porcelain").stdout == b"", "git status is not clean after the second commit"
    stat_out = git("diff", "HEAD~1", "--stat").stdout.decode()
    # Four changes: a modified, a new, a deleted and a renamed file (git detects the rename).
    for expected in ("dir0/sub1/mid0.bin", "new-file.txt", "dir3/sub4/deep/file3.txt", "=> renamed.sh",
                     "4 files changed"):
        assert expected in stat_out, f"git diff HEAD~1 --stat misses {expected!r}:\n{stat_out}"
    assert git("log", "--oneline").stdout.decode().count("\n") == 2, "git log does not show two commits"

    # Packing rewrites the object store (temporary files, renames, fsync); still consistent after.
    git("gc", "-q", "--prune=now")
    git("fsck", "--full", "--strict")
    m.unmount()
    m.start_fuse()
    git("fsck", "--full", "--strict")
    assert git("status", "--porcelain").stdout == b"", "git status is not clean after a remount"
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", repo, clone], env=env)
    assert run(["git", "-C", clone, "rev-parse", "HEAD"], env=env).stdout == git("rev-parse", "HEAD").stdout, \
        "a clone out of the mount has a different HEAD"


# --- sqlite ------------------------------------------------------------------------------------------


def sqlite_cli(db: Path, sql: str) -> str:
    return run(["sqlite3", "-batch", "-bail", db], input=sql.encode()).stdout.decode()


def test_sqlite3_command_line_database_survives_a_remount(make_mount):
    m = mount_for(make_mount)
    db = m.mnt / "cli.db"
    sqlite_cli(db, "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, n INTEGER, blob BLOB);")
    for batch in range(4):
        sqlite_cli(db, "BEGIN;\n" + "".join(
            f"INSERT INTO t (name, n, blob) VALUES ('row {batch}-{i}', {batch * 1000 + i}, randomblob({i % 300}));\n"
            for i in range(1000)) + "COMMIT;\n")
    sqlite_cli(db, "CREATE INDEX t_n ON t(n);\n"
                   "BEGIN; UPDATE t SET n = n + 1 WHERE id % 2 = 0; DELETE FROM t WHERE id % 10 = 0; COMMIT;")
    # Row id k (1..4000) was inserted with n = k - 1; even ids got +1; ids divisible by 10 are gone.
    expected_count = 4000 - 400
    expected_sum = sum(k - 1 + (k % 2 == 0) for k in range(1, 4001) if k % 10 != 0)

    def check(when: str) -> None:
        out = sqlite_cli(db, "PRAGMA integrity_check; SELECT count(*), sum(n) FROM t;").split()
        assert out == ["ok", f"{expected_count}|{expected_sum}"], f"sqlite3 {when}: {out}"

    check("before the remount")
    m.unmount()
    m.start_fuse()
    check("after the remount")


def test_python_sqlite_in_wal_mode_survives_a_remount(make_mount):
    m = mount_for(make_mount)
    path = m.mnt / "wal.db"
    connection = sqlite3.connect(path)
    try:
        mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        assert mode == "wal", f"sqlite could not switch the database in the mount to WAL (got {mode!r})"
        connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT, v INTEGER)")
        for batch in range(5):
            with connection:
                connection.executemany("INSERT INTO t (k, v) VALUES (?, ?)",
                                       ((f"key-{batch}-{i}", i * batch) for i in range(1000)))
        assert os.path.exists(str(path) + "-wal"), "WAL mode wrote no -wal file in the mount"
        # A second connection reads through the shared-memory index (-shm, a shared mmap in the mount).
        other = sqlite3.connect(path)
        try:
            assert other.execute("SELECT count(*) FROM t").fetchone()[0] == 5000, \
                "a second connection does not see the committed rows"
            with connection:
                connection.execute("DELETE FROM t WHERE v % 3 = 0")
            assert other.execute("SELECT count(*) FROM t").fetchone()[0] == connection.execute(
                "SELECT count(*) FROM t").fetchone()[0], "the second connection did not see a later commit"
        finally:
            other.close()
        expected = connection.execute("SELECT count(*), sum(v) FROM t").fetchone()
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok", "integrity_check fails in the mount"
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        connection.close()
    expected_rows = sum(1 for batch in range(5) for i in range(1000) if (i * batch) % 3 != 0)
    assert expected[0] == expected_rows, f"{expected[0]} rows instead of {expected_rows}"

    m.unmount()
    m.start_fuse()
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal", "the database forgot WAL mode"
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok", \
            "integrity_check fails after a remount"
        got = connection.execute("SELECT count(*), sum(v) FROM t").fetchone()
        assert got == expected, f"after a remount the table holds {got}, not {expected}"
        with connection:
            connection.execute("INSERT INTO t (k, v) VALUES ('after', 1)")
        assert connection.execute("SELECT count(*) FROM t").fetchone()[0] == expected[0] + 1
    finally:
        connection.close()


# --- mmap ---------------------------------------------------------------------------------------------


def test_shared_writable_mmap_reaches_the_file(make_mount):
    m = mount_for(make_mount)
    path = m.mnt / "mapped"
    size = 3 * CHUNK + 1234  # several chunks, not a multiple of the page size
    write_bytes(path, bytes(size))
    expected = bytearray(size)
    with open(path, "r+b") as f:
        with mmap.mmap(f.fileno(), size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as mapped:
            for offset, data in ((0, b"first page"), (CHUNK - 3, b"across a chunk edge"),
                                 (2 * CHUNK + 4096, os.urandom(100_000)), (size - 5, b"tail!")):
                mapped[offset:offset + len(data)] = data
                expected[offset:offset + len(data)] = data
            mapped.flush()  # msync(MS_SYNC)
    assert os.stat(path).st_size == size, "writing through a mapping changed the file size"
    with open(path, "rb") as f:
        got = f.read()
    assert got == bytes(expected), "a plain read does not return what was written through the mapping"

    # And the other way: mmap a file written with write().
    written = os.urandom(2 * CHUNK + 77)
    write_bytes(m.mnt / "written", written)
    with open(m.mnt / "written", "rb") as f:
        with mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED, mmap.PROT_READ) as mapped:
            assert mapped[:] == written, "a mapping of a file written with write() shows other bytes"

    m.unmount()
    m.start_fuse()
    with open(path, "rb") as f:
        assert f.read() == bytes(expected), "after a remount the file lacks the bytes written through the mapping"
    with open(m.mnt / "written", "rb") as f:
        with mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED, mmap.PROT_READ) as mapped:
            assert mapped[:] == written, "after a remount a mapping shows other bytes than were written"


# --- which libfuse ------------------------------------------------------------------------------------


def test_zero_fuse_runs_on_libfuse_3(make_mount):
    m = mount_for(make_mount)
    found = re.search(r"libfuse (\d+)\.(\d+) from (\S+)\)", m.fuse_log())
    assert found, f"zero-fuse did not log which libfuse it loaded:\n{m.fuse_log()}"
    assert found.group(1) == "3", f"zero-fuse says it loaded libfuse {found.group(1)}.{found.group(2)}"
    assert "libfuse3.so" in found.group(3), f"zero-fuse loaded {found.group(3)}, not libfuse3.so"
    maps = Path(f"/proc/{m.fuse.pid}/maps").read_text()
    libraries = sorted({line.split()[-1] for line in maps.splitlines()
                        if os.path.basename(line.split()[-1]).startswith("libfuse")})
    assert any("libfuse3.so" in lib for lib in libraries), f"zero-fuse has no libfuse3.so mapped: {libraries}"
    assert not any("libfuse.so.2" in lib for lib in libraries), f"zero-fuse also mapped libfuse 2: {libraries}"
    # The log names the soname (libfuse3.so.3); the mapping is the versioned file it points to.
    assert any(os.path.basename(lib).startswith(os.path.basename(found.group(3))) for lib in libraries), \
        f"the library zero-fuse named ({found.group(3)}) is not the one mapped ({libraries})"
