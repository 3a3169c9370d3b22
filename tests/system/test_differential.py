"""Differential test: Hypothesis runs random sequences of file operations on
a zero mount and on a plain local folder side by side. Every operation must
give the same result (return value or errno) on both, and after every step
the two trees must agree: names, file types and permission bits, link
counts, sizes, contents, user xattrs, and which names share an inode.

One mount serves a whole test function (mounting is slow); each example
starts by emptying both roots. The namespace is tiny (three names, at most
two directory levels) so operations collide often, and chunks are 64 KiB so
writes and truncates cross chunk boundaries often.

zero-worker runs beside it with a cache (targetDiskUsage) smaller than the
data an example writes and no upload delay, so chunks are uploaded and evicted
while the operations run. Every read of the zero tree first drops the file's
pages from the kernel's page cache (POSIX_FADV_DONTNEED), so zero-fuse answers
it, and the `evict` step waits until the worker uploaded everything, brought
the cache under its target and zero-fuse let go of the evicted files: the next
reads fault the chunks back in. The run must have evicted and faulted in
chunks, or it proved nothing about them. Examples are derandomized: every run
tries the same sequences.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import random
import shutil
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition, rule,
                                 run_state_machine_as_test)

from workerkit import cache_usage, deleted_chunk_files_held, status_counters, wait_until, wait_worker_ready

CHUNK_BYTES = 64 * 1024
MAX_DATA_BYTES = 200 * 1024
TARGET_BYTES = 128 * 1024  # two chunks: most examples write more than that
# memoryInodes: zero-fuse lets idle inodes go and reads them back after almost every step.
WORKER_CONFIG = dict(chunkSize="64KiB", targetDiskUsage="128KiB", lowWatermark=0.5, uploadDelay=0, memoryInodes=4)
SETTLE_TIMEOUT_S = 60
NAMES = ("a", "b", "c")
XATTR_NAMES = ("user.p", "user.q")
MAX_OPEN_FDS = 3

AT_FDCWD = -100
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2

libc = ctypes.CDLL(None, use_errno=True)

# Mostly top-level names, so that most operations find what they name.
depths = st.sampled_from([1, 1, 1, 2, 2, 3])
paths = depths.flatmap(lambda depth: st.lists(st.sampled_from(NAMES), min_size=depth, max_size=depth)).map("/".join)
near_boundaries = st.sampled_from([0, 1, CHUNK_BYTES - 1, CHUNK_BYTES, CHUNK_BYTES + 1,
                                   2 * CHUNK_BYTES - 5, 2 * CHUNK_BYTES, 3 * CHUNK_BYTES + 3])
offsets = st.one_of(near_boundaries, st.integers(0, 4 * CHUNK_BYTES))
lengths = st.one_of(near_boundaries, st.integers(0, MAX_DATA_BYTES))
file_modes = st.sampled_from([0o644, 0o600, 0o755, 0o000, 0o777, 0o4755, 0o2644])
dir_modes = st.sampled_from([0o755, 0o700, 0o000, 0o777, 0o1777, 0o2755])
any_modes = st.one_of(file_modes, dir_modes)
xattr_values = st.one_of(st.just(b""), st.binary(max_size=16), st.binary(min_size=1000, max_size=3000))
xattr_flags = st.sampled_from([0, os.XATTR_CREATE, os.XATTR_REPLACE])
rename_flags = st.sampled_from([0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE])


def payload(length: int, seed: int) -> bytes:
    """Cheap, shrinkable data: Hypothesis draws a length and a seed, not megabytes."""
    return random.Random(seed).randbytes(length)


def outcome(call, *args):
    """("ok", value) or ("errno", name): what both trees must agree on."""
    try:
        return "ok", call(*args)
    except OSError as error:
        return "errno", errno.errorcode.get(error.errno, error.errno)


# --- the operations, each run once per tree with that tree's root ------------------

def create_file(root: Path, path: str, mode: int, exclusive: bool, truncate: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else 0) | (os.O_TRUNC if truncate else 0)
    os.close(os.open(root / path, flags, mode))


def write_at(root: Path, path: str, offset: int, data: bytes, create: bool, append: bool) -> int:
    flags = os.O_WRONLY | (os.O_CREAT if create else 0) | (os.O_APPEND if append else 0)
    fd = os.open(root / path, flags, 0o644)
    try:
        return os.write(fd, data) if append else os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def uncached(fd: int) -> int:
    """Drop the file's pages from the kernel's page cache, so that the next read
    asks the file system (zero-fuse), not the kernel."""
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    return fd


def read_at(root: Path, path: str, offset: int, size: int) -> bytes:
    fd = uncached(os.open(root / path, os.O_RDONLY))
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def renameat2(root: Path, old: str, new: str, flags: int) -> None:
    if libc.renameat2(AT_FDCWD, os.fsencode(root / old), AT_FDCWD, os.fsencode(root / new),
                      ctypes.c_uint(flags)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), old)


def fstat_view(fd: int) -> tuple:
    st_ = os.fstat(fd)
    return stat.S_IFMT(st_.st_mode), stat.S_IMODE(st_.st_mode), st_.st_nlink, st_.st_size


# --- what a tree looks like, minus what legitimately differs -------------------------

def snapshot(root: Path) -> tuple[dict, set]:
    """Every name below root with (type, permission bits, nlink, size, content
    digest, user xattrs); and the names grouped by shared inode."""
    entries = {"/": ("dir", None, os.lstat(root).st_nlink, None, None, None)}
    by_inode: dict[int, set[str]] = {}
    pending = [""]
    while pending:
        folder = pending.pop()
        for name in sorted(os.listdir(root / folder) if folder else os.listdir(root)):
            rel = f"{folder}/{name}" if folder else name
            full = root / rel
            info = os.lstat(full)
            xattrs = {key: os.getxattr(full, key, follow_symlinks=False)
                      for key in sorted(os.listxattr(full, follow_symlinks=False)) if key.startswith("user.")}
            if stat.S_ISDIR(info.st_mode):
                entries[rel] = ("dir", oct(stat.S_IMODE(info.st_mode)), info.st_nlink, None, None, xattrs)
                pending.append(rel)
            else:
                with open(full, "rb") as file:
                    uncached(file.fileno())
                    data = file.read()
                entries[rel] = ("file" if stat.S_ISREG(info.st_mode) else oct(stat.S_IFMT(info.st_mode)),
                                oct(stat.S_IMODE(info.st_mode)), info.st_nlink, info.st_size,
                                (len(data), hashlib.sha256(data).hexdigest()[:16]), xattrs)
                by_inode.setdefault(info.st_ino, set()).add(rel)
    return entries, {frozenset(names) for names in by_inode.values()}


def empty(root: Path) -> None:
    for entry in list(root.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def first_difference(local: bytes, zero: bytes) -> str:
    at = next((i for i, (x, y) in enumerate(zip(local, zero)) if x != y), min(len(local), len(zero)))
    return f"lengths {len(local)} / {len(zero)}, first difference at byte {at}"


# --- the machine ------------------------------------------------------------------------

def settle(mount) -> None:
    """Everything uploaded, the cache under its target, and zero-fuse holding no
    descriptor of an evicted chunk file: the next read of an evicted chunk faults it in."""
    mount.zero("sync", str(mount.mnt), timeout=SETTLE_TIMEOUT_S)
    wait_until(lambda: cache_usage(mount.cache) <= TARGET_BYTES, SETTLE_TIMEOUT_S,
               "the worker to bring the cache under its target")
    wait_until(lambda: deleted_chunk_files_held(mount.fuse.pid, mount.cache)[0] == 0, SETTLE_TIMEOUT_S,
               "zero-fuse to close its descriptors on evicted chunk files")


def differential_machine(local_root: Path, mount) -> type[RuleBasedStateMachine]:
    zero_root = mount.mnt
    roots = (local_root, zero_root)

    class Differential(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            for root in roots:
                empty(root)
            self.fds: list[tuple[int | None, int | None, str]] = []  # (local fd, zero fd, path opened)
            self.settled = False

        def both(self, call, *args):
            local, zero = (outcome(call, root, *args) for root in roots)
            if local != zero and local[0] == zero[0] == "ok" and isinstance(local[1], bytes):
                raise AssertionError(f"{call.__name__}{args}: data differs: {first_difference(local[1], zero[1])}")
            assert local == zero, f"{call.__name__}{args}: local folder gave {local}, zero gave {zero}"
            return local

        @initialize(kinds=st.lists(st.sampled_from(["absent", "file", "dir"]), min_size=12, max_size=12),
                    seed=st.integers(0, 2**16))
        def populate(self, kinds, seed):
            """Start from a few files and folders, so that early steps find names."""
            kinds = iter(kinds)
            for top in NAMES:
                kind = next(kinds)
                if kind == "file":
                    self.both(write_at, top, 0, payload(CHUNK_BYTES + seed % 1000, seed), True, False)
                elif kind == "dir":
                    self.both(lambda root, p: os.mkdir(root / p), top)
                    for child in NAMES:
                        if next(kinds) == "file":
                            self.both(write_at, f"{top}/{child}", seed % 100, payload(seed % 5000, seed), True, False)

        # names and data

        @rule(path=paths, mode=file_modes, exclusive=st.booleans(), truncate=st.booleans())
        def create(self, path, mode, exclusive, truncate):
            self.both(create_file, path, mode, exclusive, truncate)

        @rule(path=paths, offset=offsets, length=lengths, seed=st.integers(0, 2**16),
              create=st.booleans(), append=st.booleans())
        def write(self, path, offset, length, seed, create, append):
            self.both(write_at, path, offset, payload(length, seed), create, append)

        @rule(path=paths, size=offsets)
        def truncate(self, path, size):
            self.both(lambda root, p, s: os.truncate(root / p, s), path, size)

        @rule(path=paths, offset=offsets, size=lengths)
        def read(self, path, offset, size):
            self.both(read_at, path, offset, size)

        @rule(old=paths, new=paths, flags=rename_flags)
        def rename(self, old, new, flags):
            self.both(renameat2, old, new, flags)

        @rule(existing=paths, new=paths)
        def link(self, existing, new):
            self.both(lambda root, e, n: os.link(root / e, root / n, follow_symlinks=False), existing, new)

        @rule(path=paths)
        def unlink(self, path):
            self.both(lambda root, p: os.unlink(root / p), path)

        @rule(path=paths, mode=dir_modes)
        def mkdir(self, path, mode):
            self.both(lambda root, p, m: os.mkdir(root / p, m), path, mode)

        @rule(path=paths)
        def rmdir(self, path):
            self.both(lambda root, p: os.rmdir(root / p), path)

        @rule(path=paths, mode=any_modes)
        def chmod(self, path, mode):
            self.both(lambda root, p, m: os.chmod(root / p, m), path, mode)

        @precondition(lambda self: not self.settled)
        @rule()
        def evict(self):
            """Once per example: let the worker upload and evict, then the invariants
            read every file back through fault-ins."""
            settle(mount)
            self.settled = True

        # extended attributes

        @rule(path=paths, name=st.sampled_from(XATTR_NAMES), value=xattr_values, flags=xattr_flags)
        def setxattr(self, path, name, value, flags):
            self.both(lambda root, p, n, v, f: os.setxattr(root / p, n, v, f), path, name, value, flags)

        @rule(path=paths, name=st.sampled_from(XATTR_NAMES))
        def removexattr(self, path, name):
            self.both(lambda root, p, n: os.removexattr(root / p, n), path, name)

        @rule(path=paths, name=st.sampled_from(XATTR_NAMES))
        def getxattr(self, path, name):
            self.both(lambda root, p, n: os.getxattr(root / p, n), path, name)

        # files held open across steps: writes through a descriptor whose name
        # has since been renamed, unlinked or replaced

        @precondition(lambda self: len(self.fds) < MAX_OPEN_FDS)
        @rule(path=paths)
        def open_fd(self, path):
            fds = [outcome(os.open, root / path, os.O_RDWR) for root in roots]
            opened = [value if kind == "ok" else None for kind, value in fds]
            self.fds.append((*opened, path))  # kept even if the open failed, so it gets closed
            assert [kind for kind, _ in fds] == ["ok", "ok"] or fds[0] == fds[1], \
                f"open({path!r}, O_RDWR): local folder gave {fds[0]}, zero gave {fds[1]}"

        @precondition(lambda self: self.fds)
        @rule(data=st.data(), offset=offsets, length=lengths, seed=st.integers(0, 2**16))
        def fd_write(self, data, offset, length, seed):
            local_fd, zero_fd, path = data.draw(st.sampled_from(self.fds))
            if local_fd is None:
                return
            chunk = payload(length, seed)
            results = [outcome(os.pwrite, fd, chunk, offset) for fd in (local_fd, zero_fd)]
            assert results[0] == results[1], f"pwrite(fd of {path!r}, {offset}): {results}"

        @precondition(lambda self: self.fds)
        @rule(data=st.data(), size=offsets)
        def fd_truncate(self, data, size):
            local_fd, zero_fd, path = data.draw(st.sampled_from(self.fds))
            if local_fd is None:
                return
            results = [outcome(os.ftruncate, fd, size) for fd in (local_fd, zero_fd)]
            assert results[0] == results[1], f"ftruncate(fd of {path!r}, {size}): {results}"

        @precondition(lambda self: self.fds)
        @rule(data=st.data(), offset=offsets, size=lengths)
        def fd_read(self, data, offset, size):
            local_fd, zero_fd, path = data.draw(st.sampled_from(self.fds))
            if local_fd is None:
                return
            uncached(zero_fd)
            local, zero = (outcome(os.pread, fd, size, offset) for fd in (local_fd, zero_fd))
            if local != zero and local[0] == zero[0] == "ok":
                raise AssertionError(f"pread(fd of {path!r}, {size}, {offset}): {first_difference(local[1], zero[1])}")
            assert local == zero, f"pread(fd of {path!r}, {size}, {offset}): {local} / {zero}"

        @precondition(lambda self: self.fds)
        @rule(data=st.data())
        def fd_close(self, data):
            index = data.draw(st.integers(0, len(self.fds) - 1))
            local_fd, zero_fd, path = self.fds.pop(index)
            for fd in (local_fd, zero_fd):
                if fd is not None:
                    os.close(fd)

        @invariant()
        def open_files_agree(self):
            for local_fd, zero_fd, path in self.fds:
                if local_fd is not None:
                    assert fstat_view(local_fd) == fstat_view(zero_fd), \
                        f"fstat of the descriptor opened as {path!r}: (type, mode, nlink, size) differ"

        @invariant()
        def trees_agree(self):
            (local, local_links), (zero, zero_links) = snapshot(local_root), snapshot(zero_root)
            assert sorted(local) == sorted(zero), "the trees hold different names"
            for name in local:
                assert local[name] == zero[name], \
                    f"{name!r}: local folder has {local[name]}, zero has {zero[name]}"
            assert local_links == zero_links, "hard links: the names sharing an inode differ"

        def teardown(self):
            for local_fd, zero_fd, _ in self.fds:
                for fd in (local_fd, zero_fd):
                    if fd is not None:
                        os.close(fd)
            self.fds.clear()
            if not self.settled:
                # Every example reads its tree back through eviction and fault-in at least once.
                settle(mount)
                self.trees_agree()

    return Differential


def run_differential(make_mount, tmp_path: Path, examples: int, steps: int, derandomize: bool) -> None:
    mount = make_mount(worker=True, **WORKER_CONFIG)
    wait_worker_ready(mount)
    local = tmp_path / "local"
    local.mkdir()
    old_umask = os.umask(0o022)
    try:
        run_state_machine_as_test(
            differential_machine(local, mount),
            settings=settings(max_examples=examples, stateful_step_count=steps, deadline=None, database=None,
                              derandomize=derandomize,
                              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                                     HealthCheck.filter_too_much]))
    finally:
        os.umask(old_umask)
    counters = status_counters(mount.zero("status", str(mount.cache)).stdout)
    print(f"differential: {examples} examples of up to {steps} steps; worker counters {counters}")
    assert counters["evictions"] > 0 and counters["fault_ins"] > 0, \
        f"the run never evicted and faulted in a chunk, so it compared nothing that went through them: {counters}"


def test_zero_behaves_like_a_local_folder(make_mount, tmp_path):
    run_differential(make_mount, tmp_path, examples=60, steps=30, derandomize=True)


@pytest.mark.soak
def test_zero_behaves_like_a_local_folder_soak(make_mount, tmp_path):
    run_differential(make_mount, tmp_path, examples=2000, steps=80, derandomize=False)
