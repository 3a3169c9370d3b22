"""The border where zero's errors become errno: one decorator on every
FUSE method (which also counts the operation, zero.fuse.opstats), and the
checks of names a path brings in."""

from __future__ import annotations

import errno
import functools
import logging
import threading
import time

from zero.errors import DiskFull, StateConflict, ZeroError
from zero.fuse.binding import FuseOSError

log = logging.getLogger(__name__)

NAME_MAX_BYTES = 255
REPEAT_WINDOW_S = 60.0  # the same failure is logged once in this long
REMEMBERED_FAILURES = 1000


class RepeatedFailures:
    """Says each failure once per window, then how often it came back meanwhile.
    A program that retries in a loop (fsync on a fenced mount, a read of a lost
    chunk) wrote an ERROR line per try, burying everything else in the log.
    Remembers the REMEMBERED_FAILURES messages that failed last; the one that
    failed longest ago is forgotten first, saying its count if it has one."""

    def __init__(self, window_s: float = REPEAT_WINDOW_S, clock=time.monotonic, remembered: int = REMEMBERED_FAILURES):
        self.window_s = window_s
        self.clock = clock
        self.remembered = remembered
        self._said: dict[str, tuple[float, int]] = {}  # message -> (said at, repeats since), by last failure
        self._lock = threading.Lock()

    def to_say(self, message: str) -> list[str]:
        """The lines to log for this failure now: none if it was said within the window."""
        now = self.clock()
        lines = []
        with self._lock:
            said_at, repeats = self._said.pop(message, (None, 0))
            if said_at is not None and now - said_at < self.window_s:
                self._said[message] = (said_at, repeats + 1)
                return lines
            self._said[message] = (now, 0)
            if len(self._said) > self.remembered:
                oldest = next(iter(self._said))
                _said_at, forgotten = self._said.pop(oldest)
                if forgotten:
                    lines.append(_with_repeats(oldest, forgotten))
        lines.append(_with_repeats(message, repeats) if repeats else message)
        return lines


def _with_repeats(message: str, repeats: int) -> str:
    return f"{message} ({repeats} more failure(s) like it since it was last logged)"


_repeated = RepeatedFailures()


def _log_failure(op: str, error: BaseException) -> None:
    for line in _repeated.to_say(f"{op} failed: {error}"):
        log.error("%s", line)


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
            _log_failure(op, error)
            raise FuseOSError(errno.EIO) from None
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                _log_failure(op, error)
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
