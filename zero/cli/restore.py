"""`zero restore <cache>` and `zero snapshots`: the metadata in the remotes,
listed and brought back on a new machine."""

from __future__ import annotations

import datetime
import getpass
import os
import sys
import time
from pathlib import Path

from zero import config as config_module
from zero.cachedir import CacheDir
from zero.errors import NotTheWriter, ZeroError
from zero.meta import writer

RECOVERY_KEY_ENV = "ZERO_RECOVERY_KEY"


def parse_time(text: str | None) -> float | None:
    """--at: an ISO 8601 time (local time unless it names a zone) or unix seconds."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ZeroError(f"--at {text!r}: expected a time like 2026-11-26T14:00 or unix seconds") from None


def _secret(args, config, remotes, fs_id):
    from zero.meta import keyring, keys

    if args.recovery_key_file:
        return keyring.read_recovery_key(Path(args.recovery_key_file).expanduser())
    if os.environ.get(RECOVERY_KEY_ENV):
        return keyring.Secret(keys.RECOVERY_KEY, keys.normalize_recovery_key(os.environ[RECOVERY_KEY_ENV]),
                              f"${RECOVERY_KEY_ENV}")
    secret = keyring.configured_passphrase(config)
    if secret is not None:
        return secret
    sealed_with = keys.parse_envelope(keyring.fetch_envelope(remotes, fs_id)).sealed_with
    if not sys.stdin.isatty():
        raise ZeroError("the keys are sealed with a " + sealed_with.replace("-", " ") + ": give it with "
                        "--recovery-key-file, $ZERO_RECOVERY_KEY, or passphrase/passphraseFile/$ZERO_PASSPHRASE")
    if sealed_with == keys.PASSPHRASE:
        return keyring.Secret(keys.PASSPHRASE, getpass.getpass("Passphrase: "), "the prompt")
    return keyring.Secret(keys.RECOVERY_KEY, keys.normalize_recovery_key(getpass.getpass("Recovery key: ")),
                          "the prompt")


def restore(args, config) -> int:
    from zero.cli.progress import bar
    from zero.fsutil import durable_write
    from zero.meta import keyring, keys, restore as restoring
    from zero.wiring import build_remotes

    if args.take_over and args.at is None:
        raise ZeroError("--take-over goes with --at: a plain restore makes the new cache the writer already")
    read_only = args.at is not None and not args.take_over
    remotes = build_remotes(config)
    fs_id = restoring.choose_fs_id(remotes, args.fs_id)
    secret = _secret(args, config, remotes, fs_id)
    cache = CacheDir(args.cache)
    cache.prepare()
    leases = []  # the writer lease as check_lease found it

    def check_lease(fs_id, sequence):
        if read_only:
            return  # a restore point writes nothing to the remotes: any number of them may coexist
        holder = writer.read_holder(remotes, fs_id)
        why_not = writer.judge(holder, "", sequence, time.time(), config.writer_timeout_s, args.force)
        if why_not is not None:
            raise NotTheWriter(f"not restored: {why_not}. A read-only copy is always possible: "
                               f"zero restore --at TIME {args.cache}")
        leases.append(holder)

    result = restoring.restore(config.database_path(cache.root), remotes, secret, fs_id=fs_id,
                               at=parse_time(args.at), progress=bar,
                               read_only=read_only, before_writing=check_lease)
    holder = leases[0] if leases else None
    took_over = holder is not None and not holder.stopped
    if not read_only:
        # Parked (stopped) until its worker starts: another machine that stopped cleanly and holds
        # no newer metadata may still go on, and whichever writes first makes the other stale. The
        # writer taken over stays out; so does one an earlier --force restore, never started, took from.
        taken_from = holder.writer_id if took_over else (holder.taken_from if holder is not None else "")
        lease = writer.new_lease(result.writer_id, cache.root, result.sequence, time.time(), stopped=True,
                                 taken_from=taken_from)
        # Not into a remote the restore could not read: an empty mountpoint would get a folder
        # that is not the drive's, and the drive a stale lease once it is mounted there again.
        answered = [remote for remote in remotes if remote.name not in result.unreached]
        if not writer.put_lease(answered, fs_id, lease):
            print("zero: could not write the writer lease to any remote; zero-worker takes it at start",
                  file=sys.stderr)
    if secret.kind == keys.RECOVERY_KEY:
        path = keyring.recovery_key_path(config, fs_id)
        if not path.exists():  # this machine now keeps it where `zero key export` looks
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            durable_write(str(path), (keys.for_paper(secret.value) + "\n").encode())
    print(f"Restored filesystem {fs_id} into {cache.root}: snapshot {result.snapshot} and "
          f"{len(result.journals)} journal segment(s), {result.rows} rows. Mount it with: "
          f"zero-fuse <mountpoint> {cache.root}  (and zero-worker {cache.root}); data comes back as it is read.")
    if result.never_uploaded[0]:
        print(f"{result.never_uploaded[0]} chunk(s) of {result.never_uploaded[1]} file(s) had not been uploaded "
              f"when this point was backed up: those bytes exist nowhere. Reading them fails with EIO; "
              f"`zero fsck {cache.root}` names each file and byte range, and `zero fsck --repair --accept-loss` "
              f"makes them holes.")
    if result.unreached and not read_only:
        print(f"Restored without {', '.join(result.unreached)}, which did not answer: what it holds may be newer "
              f"than this. zero-worker writes nothing to the remotes from this cache until it answers and is "
              f"checked (or leaves the config, if it is gone for good).")
    if read_only:
        print("This is a read-only restore point: zero-fuse mounts it read-only and nothing is written to the "
              "remotes from it. To write from it instead, restore it again with --take-over.")
    if took_over:
        print(f"Took the filesystem over from {writer.describe(holder, time.time())}: that machine, if it comes "
              f"back, stops writing.")
    return 0


def snapshots(args, config) -> int:
    from zero.meta import restore as restoring
    from zero.wiring import build_remotes

    fs_id = args.fs_id
    if args.location:
        location = Path(args.location).expanduser()
        if location.is_file():
            config = config_module.load(str(location))
        elif not fs_id:
            from zero.cli.common import find_cache, open_state
            from zero.state import db as state_db
            database = open_state(find_cache(args.location)[0], config)
            try:
                fs_id = state_db.format_settings(database)["fs_id"]
            finally:
                database.dispose()
    remotes = build_remotes(config)
    fs_id = restoring.choose_fs_id(remotes, fs_id)
    found = restoring.catalog(remotes, fs_id)
    if not found.snapshots:
        print(f"No metadata snapshot of filesystem {fs_id} in {', '.join(found.reachable) or 'any reachable remote'}")
        return 1
    newest_snapshot, journals = found.plan()
    print(f"Filesystem {fs_id}: restore points (zero restore --at TIME picks the newest at or before TIME)")
    for sequence in sorted(found.snapshots):
        taken_at, holders = found.snapshots[sequence]
        when = datetime.datetime.fromtimestamp(taken_at).isoformat(timespec="seconds")
        extra = f" + {len(journals)} journal segment(s), the newest point" if sequence == newest_snapshot else ""
        print(f"  {when}  snapshot {sequence}{extra}  on {', '.join(holders)}")
    return 0
