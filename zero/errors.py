"""zero's own errors. Only zero/fuse turns them into errno, only the CLI
into exit codes; everything else raises and passes them on."""

import difflib
from collections.abc import Iterable


class ZeroError(Exception):
    """Base class: the message is a sentence a person can act on."""


class ConfigError(ZeroError):
    """config.yml is missing a key, has a wrong value, or does not parse."""


class CacheLocked(ZeroError):
    """Another process already serves this cache."""


class CacheFormatError(ZeroError):
    """The cache was made by another (usually newer) version of zero."""


class NotTheWriter(ZeroError):
    """Another machine writes this filesystem (its lease in the remotes names it),
    or this cache is a read-only restore point."""


class MountError(ZeroError):
    """The mountpoint or the FUSE setup is not usable."""


class RemoteError(ZeroError):
    """Base class for problems with a remote store.

    ``transient`` says whether the same call may succeed if tried again
    within seconds; the remote that raised the error decides it (from its
    SDK's error class or status code, never from the message), and
    ``Remote.is_transient`` reports it.
    """

    transient = False

    def __init__(self, message: str = "", *, transient: bool | None = None):
        super().__init__(message)
        if transient is not None:
            self.transient = transient


class RemoteUnavailable(RemoteError):
    """The remote cannot serve this call now: unreachable, overloaded, or
    misconfigured. Other copies may be tried; the object is not known lost."""

    transient = True


class CollectionUnderWay(RemoteUnavailable):
    """Uploads wait while a garbage collection deletes objects (the fence in
    zero.state.objects); they are tried again shortly."""


class AuthFailed(RemoteUnavailable):
    """The remote refused zero's credentials. Never transient: a person must
    fix the keys. A kind of RemoteUnavailable, so the pool and the worker skip
    that remote as they do an unreachable one, and never call its objects
    missing."""

    transient = False


class ObjectMissing(RemoteError):
    """The remote does not hold the requested object."""


class ObjectCorrupt(RemoteError):
    """An object failed authentication or decompression: tampered or truncated."""


class StateConflict(ZeroError):
    """A compare-and-set state transition found a different state than expected."""


class WorkerUnavailable(ZeroError):
    """zero-worker did not answer a request in time."""


class DatabaseBusy(ZeroError):
    """A write transaction waited too long for the state database."""


class DiskFull(ZeroError):
    """The cache disk has no room left for data or for the state's commits."""


class StateUnavailable(ZeroError):
    """The state database failed for a reason outside zero: the disk, its permissions, damage."""


class WrongSecret(ZeroError):
    """The passphrase or recovery key does not open the sealed data keys."""


class RestoreError(ZeroError):
    """A restore cannot proceed: no backup found, or a target that must not be overwritten."""


def did_you_mean(key: str, known: Iterable[str]) -> str:
    """"; did you mean 'x'?" for the known key closest to a misspelt one, else "".
    Config errors in zero/config.py and zero/remote/registry.py share it."""
    known = list(known)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if not close:
        lowered = {k.lower(): k for k in known}
        if key.lower() in lowered:
            close = [lowered[key.lower()]]
    return f"; did you mean {close[0]!r}?" if close else ""
