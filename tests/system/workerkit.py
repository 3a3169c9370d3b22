"""Helpers the worker system tests share: looking at the cache and the state
from outside (read-only), dropping the kernel's page cache, and polling with
a deadline instead of sleeping."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import subprocess
import time
from pathlib import Path

MIB = 1024 * 1024
KIB = 1024


@contextlib.contextmanager
def tmpfs_at(folder: Path, size_mib: int):
    """A small tmpfs mounted at ``folder`` (made if missing), unmounted however the test ends."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0700", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll ``predicate`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def drop_caches(*paths) -> None:
    """Make the next read go to zero-fuse: write back and drop the kernel's
    page cache (we are root), and advise DONTNEED for the given files too."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as control:
            control.write("3\n")
    except OSError:
        pass
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cache_usage(cache: Path) -> int:
    """Bytes the chunk files under <cache>/chunks really occupy (st_blocks * 512)."""
    total = 0
    chunks = Path(cache) / "chunks"
    try:
        buckets = list(os.scandir(chunks))
    except FileNotFoundError:
        return 0
    for bucket in buckets:
        try:
            entries = list(os.scandir(bucket.path))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            try:
                total += entry.stat(follow_symlinks=False).st_blocks * 512
            except FileNotFoundError:
                pass  # evicted between listing and stat
    return total


class State:
    """A read-only look at zero's SQLite state (WAL: readers never block writers)."""

    def __init__(self, cache: Path):
        self.path = Path(cache) / "state.sqlite3"

    def query(self, sql: str, *params):
        connection = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
        try:
            return connection.execute(sql, params).fetchall()
        finally:
            connection.close()

    def chunks_of(self, ino: int) -> dict[int, str]:
        return dict(self.query("SELECT idx, state FROM chunks WHERE ino = ? ORDER BY idx", ino))

    def chunk_rows(self, ino: int) -> list[tuple]:
        return self.query("SELECT idx, state, object_key FROM chunks WHERE ino = ? ORDER BY idx", ino)

    def states(self, inos=None) -> dict[str, int]:
        if inos is None:
            rows = self.query("SELECT state, count(*) FROM chunks GROUP BY state")
        else:
            inos = list(inos)
            marks = ",".join("?" * len(inos))
            rows = self.query(f"SELECT state, count(*) FROM chunks WHERE ino IN ({marks}) GROUP BY state", *inos)
        return dict(rows)

    def dirty_chunk_files(self) -> list[tuple[int, int]]:
        return self.query("SELECT ino, idx FROM chunks WHERE state IN ('dirty', 'uploading')")


def status_counters(status_text: str) -> dict[str, int]:
    """The 'so far:' line of `zero status` as numbers."""
    line = next(line for line in status_text.splitlines() if "so far:" in line)
    found = {}
    for name, pattern in (("uploads", r"(\d+) uploads"), ("dedup_hits", r"(\d+) deduplicated"),
                          ("evictions", r"(\d+) evictions"), ("fault_ins", r"(\d+) fault-ins")):
        match = re.search(pattern, line)
        found[name] = int(match.group(1)) if match else 0
    return found


def status_chunk_states(status_text: str) -> dict[str, int]:
    line = next(line for line in status_text.splitlines() if "chunks:" in line)
    return {name: int(count) for name, count in re.findall(r"(\w+) (\d+)", line)}


def remote_objects(remote: Path) -> list[Path]:
    """Chunk objects in a local-folder remote (<fs_id>/objects/…): not its marker, not temporary files."""
    return [path for path in Path(remote).rglob("*")
            if path.is_file() and ".tmp" not in path.relative_to(remote).parts
            and "objects" in path.relative_to(remote).parts]


def object_path(remote: Path, object_key: str) -> Path:
    """Where the local-folder remote keeps an object (<fs_id>/objects/<2>/<key>)."""
    matches = list(Path(remote).glob(f"*/objects/{object_key[:2]}/{object_key}"))
    assert len(matches) == 1, f"object {object_key} is not in {remote}: {matches}"
    return matches[0]


def sha256_of(path, block: int = MIB) -> str:
    import hashlib
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while True:
            data = source.read(block)
            if not data:
                return digest.hexdigest()
            digest.update(data)


def deleted_chunk_files_held(pid: int, cache: Path) -> tuple[int, int]:
    """(count, bytes) of chunk files that process ``pid`` still holds open after
    they were unlinked: disk space an eviction did not free."""
    prefix = str(Path(cache).resolve() / "chunks") + "/"
    count = total = 0
    fd_dir = f"/proc/{pid}/fd"
    for name in os.listdir(fd_dir):
        try:
            target = os.readlink(f"{fd_dir}/{name}")
        except OSError:
            continue
        if target.startswith(prefix) and target.endswith(" (deleted)"):
            try:
                st = os.stat(f"{fd_dir}/{name}")
            except OSError:
                continue
            count += 1
            total += st.st_blocks * 512
    return count, total


def settle_evicted(mount, *paths, timeout: float = 30.0) -> None:
    """Make the next read of evicted chunks really need a fault-in: wait until
    zero-fuse closed the descriptors of evicted chunk files (it drops them about
    once a second; until then a read is served from the unlinked file, with the
    right bytes), then drop the kernel's page cache."""
    wait_until(lambda: deleted_chunk_files_held(mount.fuse.pid, mount.cache)[0] == 0, timeout,
               "zero-fuse to close the descriptors of evicted chunk files")
    drop_caches(*paths)


def wait_worker_ready(mount, timeout: float = 30.0) -> None:
    """Wait until the mount's zero-worker holds its lock. zero-fuse mounts faster
    than the worker starts, and until the lock is held zero-fuse rightly treats
    the worker as absent (fsync then does not wait for the upload)."""
    from zero.locking import holder_pid
    wait_until(lambda: mount.worker is not None and holder_pid(mount.cache / "worker.lock") == mount.worker.pid,
               timeout, "zero-worker to start and take its lock")
