"""What every worker step needs: the state, the cache, the remotes, the codec."""

from __future__ import annotations

from dataclasses import dataclass, field

from zero import wakeup
from zero.cachedir import CacheDir
from zero.config import Config
from zero.remote import layout
from zero.remote.codec import Codec
from zero.remote.pool import RemotePool
from zero.state.db import Database
from zero.worker.unread import UnreadFetches


@dataclass
class WorkerContext:
    database: Database
    cache: CacheDir
    config: Config
    pool: RemotePool
    codec: Codec
    fs_id: str
    chunk_size: int
    # The lease that lets this process write to the remotes (zero.meta.writer.Writer); the
    # worker sets it. None only for one-shot tools that checked the lease themselves.
    writer: object | None = None
    # Chunks the fetcher brought in for a reader, not read yet: the evictor takes them last.
    unread: UnreadFetches = field(default_factory=UnreadFetches, repr=False, compare=False)
    _fuse_waker: wakeup.Waker = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._fuse_waker = wakeup.Waker(self.cache.wake, wakeup.FUSE)  # its thread starts at the first wake-up

    def may_write(self) -> bool:
        """Uploads, metadata segments and deletions ask this first: the fence."""
        return self.writer is None or self.writer.may_write()

    def segment_stored(self, sequence: int) -> None:
        """A metadata segment was stored and recorded (zero.meta.backup)."""
        if self.writer is not None:
            self.writer.segment_stored(sequence)

    def remote_key(self, object_key: str) -> str:
        """Objects live under the filesystem's id, so several caches can share a
        bucket and the collector only ever sweeps its own."""
        return layout.object_key(self.fs_id, object_key)

    @property
    def object_prefix(self) -> str:
        return layout.objects_prefix(self.fs_id)

    def wake_fuse(self) -> None:
        """Tell zero-fuse (and `zero sync`) to look again, from a thread: an upload
        group or a fault-in that touched the wake file itself waited on the disk."""
        self._fuse_waker.wake()
