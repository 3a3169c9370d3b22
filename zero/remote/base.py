"""The one small protocol every remote speaks.

Every kind of remote (a local folder, S3, B2, ...) implements these few
methods and nothing more, so one contract suite can check them all and the
pool and the worker never care which kind they hold. Implementations
translate their own failures into zero's errors at this border.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from zero.errors import ConfigError, RemoteError


def text(key: str, value: Any) -> str:
    """A non-empty string option."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected a non-empty text value, got {value!r}")
    return value


def boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


def url(key: str, value: Any) -> str:
    value = text(key, value)
    if not value.startswith(("http://", "https://")):
        raise ConfigError(f"{key}: expected an http:// or https:// address, got {value!r}")
    return value


def key_prefix(key: str, value: Any) -> str:
    """A folder inside a bucket for zero's keys, such as 'zero/' (the trailing '/' added)."""
    value = text(key, value)
    if value.startswith("/") or "//" in value or "\\" in value:
        raise ConfigError(f"{key}: a prefix like 'zero/' has no leading '/', no '//' and no backslash, got {value!r}")
    return value if value.endswith("/") else value + "/"


@dataclass(frozen=True)
class Option:
    """One key a kind of remote takes in config.yml.

    ``argument`` is the constructor's keyword for it. A ``secret`` option may
    instead be given as ``<name>Env`` (an environment variable's name) or
    ``<name>File`` (a file holding it), so it need not sit in config.yml.
    """

    name: str
    argument: str
    help: str
    required: bool = False
    parse: Callable[[str, Any], Any] = text
    secret: bool = False
    aliases: tuple[str, ...] = ()


class Remote(ABC):
    """A flat store of write-once objects under "/"-separated keys.

    Keys look like ``<fs_id>/objects/ab/abcdef...``. A key never gets new
    content: objects are content-addressed, so a second put of a key stores
    the same plaintext again (the ciphertext may differ by its nonce).
    """

    name: str  # the configured name; placement rows refer to a remote by it
    kind: ClassVar[str]  # the ``type:`` in config.yml
    options: ClassVar[tuple[Option, ...]] = ()

    @classmethod
    def check_options(cls, values: dict[str, Any], where: str) -> None:
        """Checks across options (e.g. "one of these two"), after each was parsed.
        ``values`` maps option names to values; raise ConfigError naming the key."""

    def prepare(self) -> None:
        """Make the remote ready to hold objects, once, when zero first writes
        its marker there (a local folder is created then and never again, so a
        folder whose drive is not mounted is never silently re-created)."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` durably: after return it survives a crash of the remote's host.

        Raises RemoteUnavailable when the remote cannot store it now.
        """

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The object's bytes. Raises ObjectMissing or RemoteUnavailable."""

    @abstractmethod
    def head(self, key: str) -> int | None:
        """The object's size in bytes, or None when the remote does not hold it."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object. Deleting a missing one is fine, so a collector can retry."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[tuple[str, int, float]]:
        """(key, size in bytes, mtime in unix seconds) of every object whose key
        starts with ``prefix``, in no particular order. The collector uses the
        mtime to leave fresh uploads alone."""

    def is_transient(self, error: BaseException) -> bool:
        """Whether trying the same call again within seconds may succeed.

        A remote decides this when it translates its SDK's error (from the
        error's class or status code, never its text) and records it on
        zero's error; a remote whose SDK errors may reach this refines it.
        """
        return isinstance(error, RemoteError) and error.transient

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def check_key(key: str) -> None:
    """Reject keys that could escape a folder or hide among temporary files.

    A wrong key is a bug in zero, not a remote's failure, hence ValueError.
    Components starting with "." are reserved so that remotes can keep
    their own temporary files beside the objects.
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"a remote key must be a non-empty string, got {key!r}")
    if "\0" in key or "\\" in key:
        raise ValueError(f"a remote key cannot contain NUL or backslash: {key!r}")
    for part in key.split("/"):
        if not part or part.startswith("."):
            raise ValueError(f"bad remote key {key!r}: no empty components, no leading '/', "
                             "and no component may start with '.'")
