"""`zero status`: the cache against its target, what waits for upload, the
remotes, and whether the two processes run."""

from __future__ import annotations

import json
import time

from zero.cli.common import find_cache, human, open_state
from zero.locking import holder_pid
from zero.meta import writer
from zero.meta.scrub import damage_report
from zero.state import backlog, counters, fuseops, namespace, objects, pins, quarantine, remotes, restored
from zero.state import db as state_db
from zero.state.chunkstate import ChunkState
from zero.state.db import get_meta


def status(args, config) -> int:
    cache, _ = find_cache(args.location)
    database = open_state(cache, config)
    try:
        with database.read() as connection:
            totals = namespace.totals(connection)
            by_state = backlog.counts_by_state(connection)
            count = counters.read_all(connection)
            remote_totals = objects.totals(connection)
            worker_status = state_db.worker_status(connection)
            unuploaded = backlog.unuploaded(connection)
            pinned = [(ino, namespace.path_of(connection, ino), pins.tree_bytes(connection, ino))
                      for ino in pins.roots(connection)]
            remote_rows = remotes.all_rows(connection)
            held = objects.stored_bytes_by_remote(connection)
            held_objects = objects.objects_by_remote(connection)
            bad_copies = quarantine.count(connection)
            damage = damage_report(connection, int(get_meta(connection, "chunk_size")))
            lost_chunks, lost_files = restored.never_uploaded(connection)
            fuse_ops = fuseops.read_all(connection)
            verdict = json.loads(get_meta(connection, writer.VERDICT_META) or "{}")
            read_only = get_meta(connection, writer.MODE_META) == writer.READ_ONLY
    finally:
        database.dispose()
    usage = cache.usage().total_bytes
    running_settings = worker_status.get("settings") if holder_pid(cache.lock_path("worker")) else None
    # The target the running worker keeps to, which a config edited since may not say.
    target = running_settings["targetDiskUsage"] if running_settings else config.target_disk_usage_bytes
    pinned_local = sum(local for _ino, _path, (_logical, local) in pinned)
    dirty_bytes = cache.bytes_of(unuploaded)
    fuse_pid = holder_pid(cache.lock_path("fuse"))
    worker_pid = holder_pid(cache.lock_path("worker"))
    if getattr(args, "json", False):
        print(json.dumps({
            "cache": str(cache.root), "files": totals["files"], "logical_bytes": totals["logical_bytes"],
            "cache_bytes": usage, "target_bytes": target, "over_target_bytes": max(0, usage - target),
            "chunks": {state.value: by_state.get(state.value, (0, 0))[0] for state in ChunkState},
            "backlog": {"bytes": dirty_bytes, "chunks": len(unuploaded)},
            "remote_objects": remote_totals["objects"], "remote_stored_bytes": remote_totals["stored_bytes"],
            "remotes": [{"name": row.name, "health": row.health, "since": row.since, "draining": bool(row.draining),
                         "objects": held_objects.get(row.name, 0), "stored_bytes": held.get(row.name, 0),
                         "last_error": row.last_error} for row in remote_rows],
            "totals": count,
            "bad_copies": bad_copies,
            "damaged": [{"path": item.path, "first_byte": item.first_byte, "last_byte": item.last_byte,
                         "object": item.object_key} for item in damage],
            "never_uploaded": {"chunks": lost_chunks, "files": lost_files},
            "fuse_ops": {op: {"calls": totals.calls, "errors": totals.errors, "seconds": totals.seconds}
                         for op, totals in fuse_ops.items()},
            "writer": {"role": writer.READ_ONLY if read_only else verdict.get("role"),
                       "message": verdict.get("message"), "at": verdict.get("at")},
            "fuse": {"running": fuse_pid is not None, "pid": fuse_pid},
            "worker": {"running": worker_pid is not None, "pid": worker_pid,
                       "heartbeat_at": worker_status.get("at") if worker_pid else None,
                       "upload_rate_bytes_per_s": worker_status.get("upload_rate_bytes_per_s", 0.0) if worker_pid else 0.0,
                       "metrics_address": worker_status.get("metrics_address") if worker_pid else None,
                       "settings": worker_status.get("settings") if worker_pid else None},
            "pins": [{"inode": ino, "path": path.decode("utf-8", "surrogateescape") if path else None,
                      "logical_bytes": logical, "cache_bytes": local} for ino, path, (logical, local) in pinned],
        }, indent=2))
        return 0
    lines = [f"zero status of {cache.root}",
             f"  files:      {totals['files']} files, {human(totals['logical_bytes'])}",
             f"  cache:      {human(usage)} used of {human(target)} target ({100 * usage / target:.0f}%)"]
    if usage > target:
        if dirty_bytes >= usage - target:
            why = f"{human(dirty_bytes)} of written data is not uploaded yet"
            why += "; zero-worker is not running" if worker_pid is None else "; zero-worker is uploading it"
        elif worker_pid is None:
            why = "zero-worker is not running, so nothing is evicted"
        elif pinned_local >= usage - target:
            why = f"pinned files hold {human(pinned_local)}, more than the target leaves; unpin some or raise " \
                  "targetDiskUsage (then zero reload)"
        else:
            why = "pinned or recently fetched data; zero-worker is evicting"
        lines.append(f"  OVER TARGET by {human(usage - target)}: {why}")
    states = ", ".join(f"{state.value} {by_state.get(state.value, (0, 0))[0]}" for state in ChunkState)
    lines.append(f"  chunks:     {states}")
    rate = worker_status.get("upload_rate_bytes_per_s", 0.0) if worker_pid else 0.0
    lines.append(f"  backlog:    {human(dirty_bytes)} dirty in {len(unuploaded)} chunk(s), "
                 f"uploading at {human(rate)}/s")
    lines.append(f"  remotes:    {remote_totals['objects']} objects, {human(remote_totals['stored_bytes'])} stored")
    for row in remote_rows:
        line = (f"    {row.name}: {row.health} since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(row.since))}, "
                f"{held_objects.get(row.name, 0)} objects, {human(held.get(row.name, 0))}")
        if row.draining:
            line += ", draining"
        if row.health != remotes.HEALTHY:
            line += f"; {human(dirty_bytes)} of written data waits for the remotes. Why: {row.last_error}"
        lines.append(line)
    if bad_copies:
        lines.append(f"  quarantine: {bad_copies} bad remote cop{'y' if bad_copies == 1 else 'ies'} put aside "
                     "(corrupt or missing); zero-worker repairs them from the cache or another replica")
    if damage:
        lines.append(f"  DAMAGED:    {len(damage)} chunk(s) have no good copy left anywhere (cache or remotes); "
                     "reads of them fail with EIO. Restore these files from a backup, or delete them:")
        lines += [f"    {item}" for item in damage]
    if lost_chunks:
        lines.append(f"  LOST:       {lost_chunks} chunk(s) of {lost_files} file(s) were changed on the lost machine "
                     "this cache was restored from and never uploaded; reads of those bytes fail with EIO. "
                     "`zero fsck` names them; `zero fsck --repair --accept-loss` turns them into holes")
    lines.append(f"  so far:     {count.get('uploads', 0)} uploads ({human(count.get('uploaded_bytes', 0))}), "
                 f"{count.get('dedup_hits', 0)} deduplicated, {count.get('evictions', 0)} evictions, "
                 f"{count.get('fault_ins', 0)} fault-ins")
    if fuse_ops:
        lines.append(f"  mount:      {_fuse_line(fuse_ops, count)}")
    if running_settings:
        lines.append(f"  settings:   as zero-worker uses them: targetDiskUsage {human(target)}, lowWatermark "
                     f"{running_settings['lowWatermark']}, uploadDelay {running_settings['uploadDelay']:g}s, "
                     f"logLevel {running_settings['logLevel'].lower()} (from {running_settings['source']})")
    lines.append(f"  writer:     {_writer_line(verdict, read_only)}")
    lines.append(f"  zero-fuse:  {'running (pid %d)' % fuse_pid if fuse_pid else 'not running'}")
    if worker_pid:
        age = time.time() - worker_status.get("at", 0)
        lines.append(f"  zero-worker: running (pid {worker_pid}, last heartbeat {age:.0f}s ago)")
    else:
        lines.append("  zero-worker: not running (start it with: zero-worker %s)" % cache.root)
    if pinned:
        lines.append("  pins:")
        for ino, path, (logical, local) in pinned:
            label = path.decode("utf-8", "surrogateescape") if path else f"(inode {ino}, unlinked)"
            lines.append(f"    {label}  {human(logical)}, {human(local)} in the cache")
    print("\n".join(lines))
    return 0


def _fuse_line(ops: dict, count: dict) -> str:
    calls = sorted(((totals.calls, op) for op, totals in ops.items()), reverse=True)
    busiest = ", ".join(f"{op} {number}" for number, op in calls[:4])
    hits, misses = count.get("fuse_reads_from_cache", 0), count.get("fuse_reads_faulted_in", 0)
    ratio = f"; {100 * hits / (hits + misses):.0f}% of reads served from the cache" if hits + misses else ""
    return (f"{sum(number for number, _ in calls)} operations ({busiest}), "
            f"{human(count.get('fuse_read_bytes', 0))} read, {human(count.get('fuse_written_bytes', 0))} "
            f"written{ratio}")
def _writer_line(verdict: dict, read_only: bool) -> str:
    if read_only:
        return "a read-only restore point (zero restore --at): nothing is written to the remotes from here"
    role, message = verdict.get("role"), verdict.get("message", "")
    if role is None:
        return "not checked yet: zero-worker takes the writer lease when it starts"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(verdict.get("at", 0)))
    label = {writer.WRITER: "this cache", writer.PENDING: "waiting", writer.REFUSED: "NOT THE WRITER",
             writer.FENCED: "FENCED"}.get(role, role)
    return f"{label} (as of {when}): {message}"
