"""zero's own errors. Only zero/fuse turns them into errno, only the CLI
into exit codes; everything else raises and passes them on."""


class ZeroError(Exception):
    """Base class: the message is a sentence a person can act on."""


class ConfigError(ZeroError):
    """config.yml is missing a key, has a wrong value, or does not parse."""


class CacheLocked(ZeroError):
    """Another process already serves this cache."""


class CacheFormatError(ZeroError):
    """The cache was made by another (usually newer) version of zero."""


class MountError(ZeroError):
    """The mountpoint or the FUSE setup is not usable."""


class RemoteError(ZeroError):
    """Base class for problems with a remote store."""


class RemoteUnavailable(RemoteError):
    """The remote did not answer; trying again later may work."""


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
