"""Checks before mounting, each failing with a sentence a person can act on."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
from pathlib import Path

from zero.errors import MountError

log = logging.getLogger(__name__)


def check_fuse_available() -> None:
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse does not exist: load the FUSE module (modprobe fuse), or in a container "
                         "start it with --device /dev/fuse")
    if shutil.which("fusermount3") is None:
        raise MountError("fusermount3 is not installed; install it with: apt-get install fuse3")


def is_stale_mount(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError as error:
        return error.errno == errno.ENOTCONN
    return False


def clear_stale_mount(path: Path) -> None:
    """A zero-fuse that crashed leaves 'Transport endpoint is not connected'."""
    log.warning("%s is a stale mount left by a stopped zero-fuse; unmounting it", path)
    result = subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True, text=True)
    if result.returncode != 0 or is_stale_mount(path):
        raise MountError(f"{path} is a stale mount (Transport endpoint is not connected) that zero could not "
                         f"clear; run: fusermount3 -u -z {path}")


def check_mountpoint(path: Path, allow_non_empty: bool) -> None:
    if is_stale_mount(path):
        clear_stale_mount(path)
    if not path.exists():
        raise MountError(f"the mountpoint {path} does not exist; create it with: mkdir -p {path}")
    if not path.is_dir():
        raise MountError(f"the mountpoint {path} is not a directory; choose an empty directory")
    if os.path.ismount(path):
        raise MountError(f"{path} is already a mount point; unmount it first (fusermount3 -u {path}) "
                         "or choose another directory")
    if not allow_non_empty and any(os.scandir(path)):
        raise MountError(f"the mountpoint {path} is not empty; choose an empty directory, or pass "
                         "--allow-non-empty to mount over its contents")


# The mount options zero-fuse passes to libfuse (`-o`, as in fstab); `rw` is the default.
MOUNT_OPTIONS = {
    "allow_other": "let other users see the files (root only, or user_allow_other in /etc/fuse.conf)",
    "allow_root": "let root see the files",
    "ro": "read-only: the kernel refuses every change with EROFS",
    "rw": "read-write (the default)",
    "auto_unmount": "unmount when zero-fuse dies",
}


def parse_mount_options(values) -> dict:
    """``["allow_other,ro", "auto_unmount"]`` -> libfuse's keyword options; an
    unknown one fails with the list of known ones."""
    options: dict = {}
    for value in values:
        for name in filter(None, (part.strip() for part in value.split(","))):
            if name not in MOUNT_OPTIONS:
                raise MountError(f"unknown mount option {name!r}; zero-fuse accepts "
                                 f"{', '.join(sorted(MOUNT_OPTIONS))}")
            if name == "rw":
                options.pop("ro", None)
            else:
                options[name] = True
    return options
