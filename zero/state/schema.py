"""The schema: every table and column says what it means, who writes it and
which invariant it keeps. "fuse" is zero-fuse, "worker" is zero-worker."""

from __future__ import annotations

from sqlalchemy import (
    Boolean, Column, Float, Index, Integer, LargeBinary, MetaData, PrimaryKeyConstraint, String, Table,
    UniqueConstraint,
)

from zero.state.chunkstate import ChunkState  # noqa: F401  (the states the chunks.state column holds)

SCHEMA_VERSION = 6  # 2: the remotes table; 3: the metadata backup's changelog, requests and points;
                    # 4: the quarantine of corrupt copies; 5: FUSE operation counts;
                    # 6: metadata backups name chunks not uploaded as they are now (without an object)

metadata = MetaData()


meta = Table(
    "meta", metadata,
    Column("key", String, primary_key=True, comment="setting name: schema_version, chunk_size, fs_id, ..."),
    Column("value", String, nullable=False),
    comment="Format-time settings and process heartbeats. Written by whoever owns the key.",
)

inodes = Table(
    "inodes", metadata,
    Column("ino", Integer, primary_key=True, comment="inode number; never reused (AUTOINCREMENT)"),
    Column("mode", Integer, nullable=False, comment="st_mode: type and permission bits"),
    Column("uid", Integer, nullable=False),
    Column("gid", Integer, nullable=False),
    Column("nlink", Integer, nullable=False, comment="directory entries naming it (+ '.'/'..' for directories)"),
    Column("size", Integer, nullable=False, comment="logical size in bytes; chunks past it do not exist"),
    Column("atime_ns", Integer, nullable=False),
    Column("mtime_ns", Integer, nullable=False),
    Column("ctime_ns", Integer, nullable=False),
    Column("rdev", Integer, nullable=False, default=0),
    Column("target", LargeBinary, comment="symlink target bytes; NULL for other types"),
    sqlite_autoincrement=True,
    comment="Written only by fuse. An inode with nlink 0 lives until its last handle closes; "
            "the mount-time reconciler purges the ones a crash left behind.",
)

dentries = Table(
    "dentries", metadata,
    Column("parent", Integer, nullable=False, comment="inode of the directory"),
    Column("name", LargeBinary, nullable=False, comment="file name as raw bytes (not only UTF-8), at most 255"),
    Column("ino", Integer, nullable=False),
    PrimaryKeyConstraint("parent", "name"),
    Index("dentries_by_ino", "ino"),
    comment="Directory entries. Written only by fuse; hard links are several rows with one ino.",
)

xattrs = Table(
    "xattrs", metadata,
    Column("ino", Integer, nullable=False),
    Column("name", LargeBinary, nullable=False),
    Column("value", LargeBinary, nullable=False),
    PrimaryKeyConstraint("ino", "name"),
    comment="Extended attributes. Written only by fuse.",
)

chunks = Table(
    "chunks", metadata,
    Column("ino", Integer, nullable=False),
    Column("idx", Integer, nullable=False, comment="chunk number: bytes [idx*chunk_size, (idx+1)*chunk_size)"),
    Column("state", String, nullable=False, comment="a ChunkState; changed only by chunks.transition(), a compare-and-set "
                   "checked against chunkstate.TRANSITIONS"),
    Column("version", Integer, nullable=False, default=0,
           comment="fuse bumps it whenever it takes the write lease; the worker marks a chunk clean only "
                   "if the version it uploaded is still current (no stale upload wins)"),
    Column("leased", Boolean, nullable=False, default=False,
           comment="fuse holds the write lease: writes may land at any moment, so the worker neither "
                   "uploads nor evicts. Released on close, fsync, and after uploadDelay of quiet."),
    Column("object_key", String, comment="the remote object holding the content of the last upload"),
    Column("stored_bytes", Integer, nullable=False, default=0,
           comment="bytes the cache file occupies on disk while local (worker keeps it for usage accounting)"),
    Column("last_access", Float, nullable=False, default=0.0, comment="unix time, batched by fuse; LRU order"),
    Column("pinned", Boolean, nullable=False, default=False, comment="never evict (zero pin); fetched eagerly"),
    PrimaryKeyConstraint("ino", "idx"),
    Index("chunks_by_state", "state", "last_access"),
    Index("chunks_by_object", "object_key"),
    comment="One row per chunk that is not a hole. A missing row reads as zeros.",
)

objects = Table(
    "objects", metadata,
    Column("key", String, primary_key=True, comment="keyed hash of the plaintext: identical chunks share it"),
    Column("plain_bytes", Integer, nullable=False),
    Column("stored_bytes", Integer, nullable=False, comment="size after compression and encryption"),
    Column("created", Float, nullable=False, comment="unix time the upload began (the row is the upload's intent)"),
    Column("unreferenced_since", Float,
           comment="unix time the collector first saw no chunk referencing it; deleted after a grace period"),
    comment="Remote objects the state knows about. Written only by the worker. Its reference count is "
            "the number of chunks rows naming it (indexed, computed, so it cannot drift). Write-once: a key "
            "never gets new content, so a crash between upload and commit leaves garbage, never a wrong object.",
)

placements = Table(
    "placements", metadata,
    Column("key", String, nullable=False),
    Column("remote", String, nullable=False, comment="the remote's configured name"),
    PrimaryKeyConstraint("key", "remote"),
    comment="Which remote holds a durable copy of which object. Placement is data, not a hash.",
)

fetch_requests = Table(
    "fetch_requests", metadata,
    Column("ino", Integer, nullable=False),
    Column("idx", Integer, nullable=False),
    Column("priority", Integer, nullable=False, comment="0 = a reader waits, 1 = prefetch, 2 = pin, 3 = prime"),
    Column("requested_at", Float, nullable=False),
    Column("error", String, comment="set by the worker when the fetch failed; the reader reports it"),
    PrimaryKeyConstraint("ino", "idx"),
    comment="Fault-in queue: fuse inserts, the worker serves and deletes.",
)

upload_requests = Table(
    "upload_requests", metadata,
    Column("ino", Integer, primary_key=True),
    Column("requested_at", Float, nullable=False),
    comment="fsync/zero sync: fuse asks the worker to upload this inode's dirty chunks now.",
)

pins = Table(
    "pins", metadata,
    Column("ino", Integer, primary_key=True, comment="a pinned file or directory (directories pin their tree)"),
    Column("pinned_at", Float, nullable=False),
    comment="Written by `zero pin`/`zero unpin`; the worker applies it to chunks.pinned.",
)

counters = Table(
    "counters", metadata,
    Column("name", String, primary_key=True, comment="uploads, uploaded_bytes, evictions, fault_ins, ..."),
    Column("value", Integer, nullable=False),
    comment="Running totals for zero status. Written by the worker, and by fuse for the bytes read and "
            "written through the mount and its reads served from the cache or after a fault-in.",
)

remotes = Table(
    "remotes", metadata,
    Column("name", String, primary_key=True, comment="the remote's configured name"),
    Column("remote_id", String, comment="the id written into the remote's marker at first use; a marker "
                                        "naming another id means the remote was swapped"),
    Column("health", String, nullable=False, comment="healthy | unhealthy (failing; retried) | "
                                                     "unavailable (missing or foreign marker: never written)"),
    Column("since", Float, nullable=False, comment="unix time of the last change of health"),
    Column("last_error", String, comment="the sentence that explains the health"),
    Column("draining", Boolean, nullable=False, default=False,
           comment="zero drain: no new objects go there; its objects are copied elsewhere"),
    comment="What the worker knows of each configured remote: identity and health. Written by the worker "
            "(and `zero drain`); `zero status` reads it. Invariant 2: only healthy remotes count as "
            "durable copies when a chunk is evicted.",
)

quarantine = Table(
    "quarantine", metadata,
    Column("key", String, nullable=False, comment="the object whose copy failed verification"),
    Column("remote", String, nullable=False, comment="the remote holding that bad copy (it keeps its placement row)"),
    Column("found_at", Float, nullable=False, comment="unix time the copy was first found bad"),
    Column("reason", String, nullable=False, comment="why: the codec's sentence (failed authentication, "
                                                     "truncated, ...) or that the copy is missing"),
    PrimaryKeyConstraint("key", "remote"),
    comment="Copies of objects found corrupt or missing by a fault-in or a scrub. Written by the worker and "
            "`zero scrub`. Invariant 2: a quarantined copy never counts as durable, is never a dedup target and "
            "is read last; a new copy of the same object (repair, or an upload of the same bytes) lifts it. "
            "Not backed up: a restored state finds bad copies again.",
)

changelog = Table(
    "changelog", metadata,
    Column("seq", Integer, primary_key=True, comment="increases with every change (AUTOINCREMENT: never reused)"),
    Column("tbl", String, nullable=False, comment="the backed-up table whose row changed"),
    Column("k1", LargeBinary, nullable=False, comment="the row's key, first part (as stored: an integer, text or bytes)"),
    Column("k2", LargeBinary, nullable=False, comment="second part of the key, 0 for one-part keys"),
    UniqueConstraint("tbl", "k1", "k2"),
    sqlite_autoincrement=True,
    comment="Keys of backed-up rows changed since the last metadata backup. Written only by the triggers that "
            "zero.state.changelog installs (so every writer is covered); one row per key, renumbered on each "
            "change. The worker trims what a segment in the remotes covers.",
)

backup_requests = Table(
    "backup_requests", metadata,
    Column("changelog_seq", Integer, primary_key=True, comment="back up at least up to this changelog seq"),
    Column("requested_at", Float, nullable=False),
    comment="fsync (fsyncWaitsForUpload) asks the worker for a metadata segment now. fuse inserts, the worker "
            "deletes what a segment covered; concurrent requests share one segment.",
)

backup_points = Table(
    "backup_points", metadata,
    Column("sequence", Integer, primary_key=True, comment="the segment's number in the remotes"),
    Column("kind", String, nullable=False, comment="snapshot (kept by snapshotRetention) | journal (the newest only)"),
    Column("begin_at", Float, nullable=False, comment="unix time before the segment's read transaction"),
    Column("end_at", Float, nullable=False, comment="unix time after it"),
    comment="The points a restore can return to. Written by the worker. Invariant: GC never deletes an object "
            "that was referenced at one of them (changelog.referenced_by_retained_snapshots).",
)

fuse_ops = Table(
    "fuse_ops", metadata,
    Column("op", String, primary_key=True, comment="the FUSE operation: read, write, create, getattr, ..."),
    Column("calls", Integer, nullable=False, comment="operations answered since the cache was made"),
    Column("errors", Integer, nullable=False, comment="of those, answered with an errno (ENOENT of a lookup too)"),
    Column("seconds", Float, nullable=False, comment="time spent answering them, in all"),
    comment="What zero-fuse answered, per operation. fuse counts in memory and adds its counts here about "
            "once a second (never per operation); the worker's metrics endpoint reads them at each scrape.",
)

fuse_op_latency = Table(
    "fuse_op_latency", metadata,
    Column("op", String, nullable=False),
    Column("le", Float, nullable=False, comment="a bucket's upper bound in seconds (fuseops.LATENCY_BUCKETS_S)"),
    Column("observations", Integer, nullable=False, comment="operations that took more than the bucket below "
                                                            "and at most this long"),
    PrimaryKeyConstraint("op", "le"),
    comment="The latency histogram of fuse_ops, one row per non-empty bucket; slower than the last bound "
            "is calls minus the rest. Written by fuse with fuse_ops.",
)
