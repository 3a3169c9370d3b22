"""What every `zero` command needs: finding the cache behind a path, opening
its state, and printing sizes."""

from __future__ import annotations

import os
from pathlib import Path

from zero.cachedir import CacheDir
from zero.errors import ZeroError


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


def _unescape_mount_field(text: str) -> str:
    return text.replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")


def mounted_caches() -> dict[Path, Path]:
    """mountpoint -> cache folder, for every zero filesystem mounted now."""
    found = {}
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            source, target = line.split()[:2]
            if source.startswith("zero:"):
                found[Path(_unescape_mount_field(target))] = Path(_unescape_mount_field(source[len("zero:"):]))
    return found


def find_cache(location: str) -> tuple[CacheDir, Path | None]:
    """A cache folder, or the cache behind a mountpoint or a path inside one."""
    path = Path(location).expanduser().absolute()
    mounts = mounted_caches()
    for candidate in [path, *path.parents]:
        if candidate in mounts:
            return CacheDir(mounts[candidate]), candidate
    if (path / "chunks").is_dir() or (path / "state.sqlite3").exists():
        return CacheDir(path), None
    raise ZeroError(f"{location} is neither a zero cache folder nor inside a mounted zero filesystem; "
                    "give the cache folder (the second argument of zero-fuse) or the mountpoint")


def open_state(cache: CacheDir, config):
    from zero.state import db as state_db
    path = config.database_path(cache.root)
    if not path.exists():
        raise ZeroError(f"no zero state at {path}; has zero-fuse or zero-worker run on {cache.root}?")
    return state_db.open_database(path)


def inodes_of(paths, verb: str) -> tuple[CacheDir, list[int]]:
    """The cache of the mounted filesystem that ``paths`` lie in, and their inode numbers."""
    cache = None
    inos = []
    for location in paths:
        found, mount = find_cache(location)
        if mount is None:
            raise ZeroError(f"{location} is not inside a mounted zero filesystem; {verb} a path under the mountpoint")
        if cache is not None and found.root != cache.root:
            raise ZeroError("give paths of one zero filesystem at a time")
        cache = found
        inos.append(os.lstat(location).st_ino)  # zero's inode number: the mount passes it through
    return cache, inos
