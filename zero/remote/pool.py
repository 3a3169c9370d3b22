"""The configured remotes as one store that keeps ``replicas`` copies of each object.

The pool decides nothing by hashing keys: ``put`` says which remotes took a
copy, the caller records that as placement rows, and ``get``/``delete`` are
told which remotes hold one. Adding or draining a remote then moves nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

from zero.errors import ConfigError, ObjectCorrupt, ObjectMissing, RemoteUnavailable
from zero.remote.base import Remote

log = logging.getLogger(__name__)

T = TypeVar("T")


class RemotePool:
    def __init__(self, remotes: Sequence[Remote], replicas: int):
        names = [remote.name for remote in remotes]
        if len(set(names)) != len(names):
            raise ConfigError(f"remotes: each remote needs its own name, got {names}")
        if not 1 <= replicas <= len(remotes):
            raise ConfigError(f"replicas: must be between 1 and the number of remotes ({len(remotes)}), "
                              f"got {replicas}")
        self.remotes = list(remotes)
        self.replicas = replicas
        self._by_name = {remote.name: remote for remote in self.remotes}

    def by_name(self, name: str) -> Remote:
        """The remote called ``name``. A placement row may name a remote since
        removed from the config; that copy is unreachable, hence RemoteUnavailable."""
        try:
            return self._by_name[name]
        except KeyError:
            raise RemoteUnavailable(f"no remote named {name!r} is configured (configured: "
                                    f"{', '.join(self._by_name)}); add it back to reach its objects") from None

    def put(self, key: str, data: bytes) -> list[str]:
        """Store on the first ``replicas`` remotes, in config order, that accept it;
        returns their names for the placement rows. Raises RemoteUnavailable if
        fewer accept it; the copies already made are then orphans for the collector."""
        stored: list[str] = []
        refused: list[str] = []
        for remote in self.remotes:
            if len(stored) == self.replicas:
                break
            try:
                remote.put(key, data)
            except RemoteUnavailable as error:
                log.warning("Could not store %s on remote %r, trying the next one: %s", key, remote.name, error)
                refused.append(f"{remote.name} ({error})")
                continue
            stored.append(remote.name)
        if len(stored) < self.replicas:
            raise RemoteUnavailable(
                f"stored {key} on {len(stored)} of the {self.replicas} remotes that replicas asks for "
                f"(stored on: {', '.join(stored) or 'none'}; refused: {'; '.join(refused)})")
        return stored

    def get(self, key: str, holders: Sequence[str], decode: Callable[[bytes], T] | None = None) -> bytes | T:
        """The object from the first holder, in the given order, that has it.

        ``decode`` (e.g. ``lambda blob: codec.open(blob, expected_key=key)``)
        runs on each copy, so a corrupt copy also falls back to the next holder.
        When all fail: RemoteUnavailable if any holder was unreachable (the
        object may come back), else the last ObjectMissing or ObjectCorrupt.
        """
        if not holders:
            raise ObjectMissing(f"no remote holds a copy of {key}")
        failures: list[Exception] = []
        for position, name in enumerate(holders):
            try:
                blob = self.by_name(name).get(key)
                return decode(blob) if decode is not None else blob
            except (RemoteUnavailable, ObjectMissing, ObjectCorrupt) as error:
                if position < len(holders) - 1:
                    log.warning("Could not read %s from remote %r, trying the next holder: %s", key, name, error)
                failures.append(error)
        unavailable = [error for error in failures if isinstance(error, RemoteUnavailable)]
        raise (unavailable[-1] if unavailable else failures[-1])

    def delete(self, key: str, holders: Sequence[str]) -> None:
        """Delete every holder's copy. Raises RemoteUnavailable naming those that
        could not, after trying all; deleting again later is safe."""
        refused = []
        for name in holders:
            try:
                self.by_name(name).delete(key)
            except RemoteUnavailable as error:
                refused.append(f"{name} ({error})")
        if refused:
            raise RemoteUnavailable(f"could not delete {key} from: {'; '.join(refused)}")

