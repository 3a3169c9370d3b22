"""A remote that is a plain folder: a second disk, a NAS mount, or a stand-in for the cloud.

An object is the file ``<path>/<key>``. Puts go through
``zero.fsutil.durable_write`` with temporary files in ``<path>/.tmp``, so
an object is there whole or not at all, and a crash leaves at most a stray
temporary file.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import zlib
from collections.abc import Iterator

from zero.fsutil import durable_write, fsync_dir
from zero.errors import ObjectMissing, RemoteUnavailable
from zero.remote.base import Option, Remote, check_key

TMP_FOLDER_NAME = ".tmp"
# durable_write names its temporary file after the pid and the file's basename,
# so two threads putting the same key would share one temporary file.
_PUT_LOCK_STRIPES = 64

# What a person can do about each failure; the default covers the rest.
_HINTS = {
    errno.EACCES: "fix the folder's permissions or run zero as a user who can write there",
    errno.EPERM: "fix the folder's permissions or run zero as a user who can write there",
    errno.EROFS: "the file system is read-only; remount it read-write or choose another folder",
    errno.ENOSPC: "the disk is full; free space there or add another remote",
    errno.EDQUOT: "the disk quota is used up; free space there or add another remote",
    errno.ENOTDIR: "part of that path is a file, not a folder; choose another path for this remote",
    errno.ENOENT: "the folder does not exist (nothing was stored there yet, or its drive is not mounted)",
    errno.EIO: "the disk reported an I/O error; check the disk",
}
_DEFAULT_HINT = "check that the folder's disk is mounted and healthy"
# A local folder's failures (permissions, a full or unmounted disk) need a
# person, not a retry within seconds; the worker tries again on its next pass.
# These few may clear by themselves, e.g. on a network mount.
_TRANSIENT_ERRNOS = frozenset({errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT, errno.EINTR, errno.ESTALE})
_ABSENT = (errno.ENOENT, errno.ENOTDIR, errno.EISDIR)


class LocalRemote(Remote):
    kind = "local"
    options = (
        Option("path", "path", required=True,
               help="the folder objects are stored in; created when zero first uses it (never again "
                    "afterwards, so an unmounted drive is not mistaken for an empty folder); ~ is your home"),
    )

    def __init__(self, name: str, path: str | os.PathLike):
        self.name = name
        self.root = os.path.abspath(os.path.expanduser(os.fspath(path)))
        self._tmp = os.path.join(self.root, TMP_FOLDER_NAME)
        self._put_locks = [threading.Lock() for _ in range(_PUT_LOCK_STRIPES)]

    def path_of(self, key: str) -> str:
        check_key(key)
        return os.path.join(self.root, *key.split("/"))

    def prepare(self) -> None:
        try:
            self._make_folders(self.root, below_root=False)
        except OSError as error:
            raise self._unavailable("create", self.root, error) from error

    def put(self, key: str, data: bytes) -> None:
        path = self.path_of(key)
        # Content-addressed keys make a second put store the same plaintext, so
        # replacing the file atomically is as safe as keeping it, and heals a copy
        # that was damaged on disk.
        basename = os.path.basename(path)
        with self._put_locks[zlib.crc32(basename.encode()) % _PUT_LOCK_STRIPES]:
            absent = self._root_absent("store", path)
            if absent:
                raise absent
            try:
                self._make_folders(self._tmp)
                self._make_folders(os.path.dirname(path))
                durable_write(path, data, tmp_dir=self._tmp)
            except OSError as error:
                raise self._unavailable("store", path, error) from error

    def get(self, key: str) -> bytes:
        path = self.path_of(key)
        try:
            with open(path, "rb") as file:
                return file.read()
        except OSError as error:
            raise self._read_error(key, path, error) from error

    def head(self, key: str) -> int | None:
        path = self.path_of(key)
        try:
            st = os.stat(path)
        except OSError as error:
            translated = self._read_error(key, path, error)
            if isinstance(translated, ObjectMissing):
                return None
            raise translated from error
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def delete(self, key: str) -> None:
        path = self.path_of(key)
        try:
            os.unlink(path)
        except OSError as error:
            translated = self._read_error(key, path, error, verb="delete")
            if not isinstance(translated, ObjectMissing):
                raise translated from error

    def list(self, prefix: str = "") -> Iterator[tuple[str, int, float]]:
        # Walk only the folder the prefix fully names; its last partial
        # component is matched by name.
        folder_key = prefix.rpartition("/")[0]
        if folder_key:
            check_key(folder_key)
        absent = self._root_absent("list", self.root)
        if absent:
            raise absent
        start = os.path.join(self.root, *folder_key.split("/")) if folder_key else self.root
        yield from self._walk(start, f"{folder_key}/" if folder_key else "", prefix)

    def _walk(self, folder: str, key_prefix: str, prefix: str) -> Iterator[tuple[str, int, float]]:
        try:
            with os.scandir(folder) as scan:
                entries = list(scan)
        except OSError as error:
            if error.errno in _ABSENT:
                return  # nothing under this prefix, or removed while we walked
            raise self._unavailable("list", folder, error) from error
        for entry in entries:
            if entry.name.startswith("."):
                continue  # temporary files, never keys
            key = key_prefix + entry.name
            if not key.startswith(prefix):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            except OSError as error:
                raise self._unavailable("list", entry.path, error) from error
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(entry.path, key + "/", prefix)
            elif stat.S_ISREG(st.st_mode):
                yield key, st.st_size, st.st_mtime

    def _make_folders(self, folder: str, below_root: bool = True) -> None:
        """mkdir -p that also fsyncs each new folder's parent, so a new folder's
        entry survives a power cut together with the object put into it. Below
        the root only, unless ``below_root`` is off (prepare)."""
        missing = []
        while not os.path.isdir(folder):
            if below_root and folder == self.root:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), folder)
            missing.append(folder)
            parent = os.path.dirname(folder)
            if parent == folder:
                break
            folder = parent
        for new in reversed(missing):
            try:
                os.mkdir(new)
            except FileExistsError:
                if not os.path.isdir(new):
                    raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), new) from None
                continue  # another thread or process made it first
            fsync_dir(os.path.dirname(new))

    def _read_error(self, key: str, path: str, error: OSError, verb: str = "read") -> Exception:
        """ObjectMissing if the remote is there but the object is not, else RemoteUnavailable."""
        if error.errno not in _ABSENT:
            return self._unavailable(verb, path, error)
        # A vanished root folder is an unmounted drive far more often than
        # lost objects; saying "missing" could make a collector forget copies.
        return self._root_absent(verb, path) or ObjectMissing(f"remote {self.name!r} has no object {key}")

    def _root_absent(self, verb: str, path: str) -> RemoteUnavailable | None:
        if os.path.isdir(self.root):
            return None
        return RemoteUnavailable(
            f"remote {self.name!r}: cannot {verb} {path}: the remote folder {self.root} does not exist "
            "or is not a folder (nothing was stored there yet, or its drive is not mounted)", transient=False)

    def _unavailable(self, verb: str, path: str, error: OSError) -> RemoteUnavailable:
        where = error.filename if error.filename else path
        hint = _HINTS.get(error.errno, _DEFAULT_HINT)
        reason = error.strerror or type(error).__name__
        return RemoteUnavailable(f"remote {self.name!r} (folder {self.root}): cannot {verb} {where}: {reason}; {hint}",
                                 transient=error.errno in _TRANSIENT_ERRNOS)
