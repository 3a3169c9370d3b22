"""The border where zero's errors become errno: one decorator on every
FUSE method (which also counts the operation, zero.fuse.opstats), and the
checks of names a path brings in."""

from __future__ import annotations

import errno
import functools
import logging
import time

from zero.errors import DiskFull, StateConflict, ZeroError
from zero.fuse.binding import FuseOSError

log = logging.getLogger(__name__)

NAME_MAX_BYTES = 255


def _errno_of(error: OSError) -> int:
    if isinstance(error, FileNotFoundError):
        return errno.ENOENT
    return error.errno or errno.EIO


def translated(method):
    """zero's errors -> errno, with a logged reason for EIO. ENOSPC is the
    caller's to handle (a full disk is not zero's failure), so it is not
    logged. Anything unexpected is EIO with its traceback, never mfusepy's EINVAL.
    Each call is counted and timed in ``self.op_stats``, and registered with
    ``self.tree`` while it runs (what it takes stays in memory)."""
    op = method.__name__

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        started = time.perf_counter()
        operation = self.tree.operation_started()
        failed, result = True, None
        try:
            result = method(self, *args, **kwargs)
            failed = False
            return result
        except FuseOSError:
            raise
        except DiskFull:
            raise FuseOSError(errno.ENOSPC) from None
        except (ZeroError, StateConflict) as error:
            log.error("%s failed: %s", method.__name__, error)
            raise FuseOSError(errno.EIO) from None
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                log.error("%s failed: %s", method.__name__, error)
            raise FuseOSError(_errno_of(error)) from None
        except Exception:
            log.exception("%s failed unexpectedly", method.__name__)
            raise FuseOSError(errno.EIO) from None
        finally:
            self.tree.operation_ended(operation)
            self.op_stats.record(op, time.perf_counter() - started, failed, result)
    return wrapper


def name_bytes(name: str) -> bytes:
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > NAME_MAX_BYTES:
        raise FuseOSError(errno.ENAMETOOLONG)
    return raw


def split(path: str) -> tuple[str, str]:
    parent, _, name = path.rpartition("/")
    return parent or "/", name
