"""The kernel's read-ahead for the mount: as large as zero's requests.

Linux caps a FUSE mount's read-ahead at its backing device's default,
128 KiB, whatever ``max_readahead`` the filesystem asks for, so a
sequential reader's pages reached zero-fuse 128 KiB at a time: eight calls
where one 1 MiB request would do. The mount's own device takes a larger
value through sysfs (``/sys/class/bdi/<major:minor>/read_ahead_kb``),
which root may write; it lasts as long as the mount. Without root it stays
as it was, and zero-fuse says so once.
"""

from __future__ import annotations

import logging
from pathlib import Path

from zero.fsutil import zero_mounts

log = logging.getLogger(__name__)

SYSFS_BDI = Path("/sys/class/bdi")


def raise_readahead(mountpoint: str | Path, kib: int) -> None:
    """Make the newest zero mount on ``mountpoint`` read ahead ``kib`` KiB, unless
    it already reads ahead at least that much (someone set it on purpose)."""
    try:
        mounts = zero_mounts(mountpoint)
        if not mounts:
            log.info("Found no zero mount on %s in /proc/self/mountinfo: the kernel's read-ahead for it is left "
                     "as it was", mountpoint)
            return
        setting = SYSFS_BDI / mounts[-1][1] / "read_ahead_kb"
        if int(setting.read_text()) >= kib:
            return
        setting.write_text(str(kib))
    except (OSError, ValueError) as error:
        log.info("Could not raise the kernel's read-ahead for %s to %d KiB (%s): sequential reads reach zero "
                 "in smaller requests. zero-fuse running as root raises it.", mountpoint, kib, error)
        return
    log.debug("Kernel read-ahead for %s raised to %d KiB (%s)", mountpoint, kib, setting)
