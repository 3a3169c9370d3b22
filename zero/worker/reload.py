"""SIGHUP: re-read the config and apply what can change while running.

Live: targetDiskUsage, lowWatermark, uploadDelay, gcGracePeriod,
prefetchChunks, logLevel, scrubRate. Everything else is kept as it was, and the log
says which process needs a restart for it. The settings in use are
published in the heartbeat, so `zero status` shows them.
"""

from __future__ import annotations

import dataclasses
import logging

from zero import config as config_module
from zero.config import Config
from zero.errors import ZeroError

log = logging.getLogger("zero.worker")

# Config field -> the key people write.
LIVE = {"target_disk_usage_bytes": "targetDiskUsage", "low_watermark": "lowWatermark",
        "upload_delay_s": "uploadDelay", "gc_grace_period_s": "gcGracePeriod",
        "prefetch_chunks": "prefetchChunks", "log_level": "logLevel", "scrub_rate_bytes_per_s": "scrubRate"}
WORKER_RESTART = {"remotes": "remotes (and their bwlimit, quota, weight)", "replicas": "replicas",
                  "metrics_address": "metricsAddress", "sqlite_file_location": "sqliteFileLocation"}
FUSE_REMOUNT = {"fault_in_timeout_s": "faultInTimeout", "fsync_waits_for_upload": "fsyncWaitsForUpload",
                "capacity_bytes": "capacity", "min_free_disk_bytes": "minFreeDisk", "chunk_size_bytes": "chunkSize"}


def settings(config: Config) -> dict:
    """The settings a running worker uses, as `zero status` shows them."""
    return {key: getattr(config, field) for field, key in {**LIVE, **WORKER_RESTART}.items()
            if field != "remotes"} | {"remotes": [spec.name for spec in config.remotes], "source": config.source}


def reload(current: Config, path: str | None) -> tuple[Config, list[str]]:
    """The config to use now and what to say about it. A config that does not
    load leaves everything as it was."""
    try:
        fresh = config_module.load(path)
    except ZeroError as error:
        return current, [f"Not reloaded: {error}; still using the settings loaded before"]
    changes = {field: getattr(fresh, field) for field in LIVE if getattr(fresh, field) != getattr(current, field)}
    said = [f"{LIVE[field]}: {_show(getattr(current, field))} -> {_show(value)}" for field, value in changes.items()]
    messages = [("Reloaded " + fresh.source + ": " + ", ".join(said)) if said
                else f"Reloaded {fresh.source}: no setting that can change while running has changed"]
    for table, who in ((WORKER_RESTART, "a restart of zero-worker (zero umount, then zero mount)"),
                       (FUSE_REMOUNT, "a remount (zero umount, then zero mount)")):
        waiting = [key for field, key in table.items() if getattr(fresh, field) != getattr(current, field)]
        if waiting:
            messages.append(f"Changed, but takes effect only after {who}: {', '.join(waiting)}")
    if "log_level" in changes:
        logging.getLogger().setLevel(fresh.log_level)
    return dataclasses.replace(current, **changes), messages


def _show(value) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1024 * 1024:
        return f"{value / 1024**2:.0f} MiB" if value < 1024**3 else f"{value / 1024**3:.1f} GiB"
    return str(value)
