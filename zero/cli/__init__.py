"""`zero`: admin commands, one module each. The only place zero's errors become exit codes.

    zero status <cache or mountpoint>
    zero pin <path>...     keep files local ("available offline")
    zero unpin <path>...
    zero warmup <path>... [--wait]   fetch trees into the cache before they are read
    zero sync <mountpoint> upload everything written so far, then return
    zero key export|change-passphrase <cache>
    zero scrub <cache>     verify every stored copy, repair bad ones
    zero fsck <cache>      check (and with --repair, repair) the state, the cache and the remotes
    zero restore <cache>   rebuild a lost machine's state from the remotes
    zero snapshots [cache or config]
    zero mount <mountpoint> <cache> [-d]   zero-worker and zero-fuse together; zero umount <mountpoint>
"""

from __future__ import annotations

import argparse
import sys

from zero import fsutil, logsetup, wiring
from zero.cli import fsck
from zero.cli.drain import drain
from zero.cli.gc import gc
from zero.cli.key import change_passphrase, export
from zero.cli.pins import pin, unpin
from zero.cli.rebalance import rebalance
from zero.cli.restore import restore, snapshots
from zero.cli.scrub import scrub
from zero.cli.status import status
from zero.cli.sync import sync
from zero.cli.warmup import warmup
from zero.errors import ZeroError
from zero.units import parse_duration

EXIT_ERROR = 1
EXIT_USAGE = 2


def _add_service_commands(commands) -> None:
    from zero.cli import mount, umount
    from zero.cli.systemd import add_arguments as systemd_arguments, systemd_unit

    command = commands.add_parser("mount", help="start zero-worker and zero-fuse together; Ctrl-C (or zero umount) "
                                                "stops both")
    mount.add_arguments(command)
    command.set_defaults(run=mount.mount)
    command = commands.add_parser("umount", help="unmount, let the worker take over what is dirty, stop it")
    command.add_argument("mountpoint")
    command.add_argument("--lazy", action="store_true", help="detach a busy mount now (umount -l)")
    command.add_argument("--timeout", type=float, default=umount.STOP_TIMEOUT_S, help="seconds to wait for each process")
    command.set_defaults(run=umount.umount)
    from zero.cli.stats import stats
    command = commands.add_parser("stats", help="live rates from the running worker, a line per interval")
    command.add_argument("location", help="the mountpoint or the cache folder")
    command.add_argument("--interval", type=float, default=1.0, help="seconds between lines")
    command.add_argument("--count", type=int, help="stop after this many lines")
    command.set_defaults(run=stats)
    from zero.cli.reload import reload
    command = commands.add_parser("reload", help="make the running worker re-read the config (as SIGHUP does)")
    command.add_argument("location", help="the mountpoint or the cache folder")
    command.set_defaults(run=reload)
    command = commands.add_parser("systemd-unit", help="print a systemd unit that mounts zero at boot or login")
    systemd_arguments(command)
    command.set_defaults(run=systemd_unit)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="zero", description="Administer zero filesystems.")
    parser.add_argument("--config", help="config.yml (default: $ZERO_CONFIG or ~/.config/zero/config.yml)")
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("status", help="what is cached, dirty and uploaded; whether the worker runs")
    command.add_argument("location", help="the cache folder or the mountpoint")
    command.add_argument("--json", action="store_true", help="machine-readable, one JSON object")
    command.set_defaults(run=status)
    command = commands.add_parser("pin", help="keep files or trees in the cache (available offline)")
    command.add_argument("paths", nargs="+")
    command.add_argument("--wait", action="store_true", help="return once they are all in the cache")
    command.add_argument("--timeout", type=float, default=3600.0, help="with --wait: give up after this many seconds")
    command.set_defaults(run=pin)
    command = commands.add_parser("warmup", help="fetch files or trees into the cache before they are read")
    command.add_argument("paths", nargs="+")
    command.add_argument("--wait", action="store_true", help="show the progress, return once all is in the cache; "
                         "exit 1 naming what could not be fetched")
    command.add_argument("--timeout", type=float, default=3600.0, help="with --wait: give up after this many seconds")
    command.set_defaults(run=warmup)
    command = commands.add_parser("unpin", help="let pinned files be evicted again")
    command.add_argument("paths", nargs="+")
    command.set_defaults(run=unpin)
    command = commands.add_parser("sync", help="return once everything written so far is uploaded")
    command.add_argument("location", help="the mountpoint")
    command.add_argument("--timeout", type=float, default=3600.0, help="give up after this many seconds")
    command.set_defaults(run=sync)
    command = commands.add_parser("gc", help="what unused remote objects would be deleted; --delete deletes them (the worker does every 10 minutes)")
    command.add_argument("location", help="the cache folder or the mountpoint")
    command.add_argument("--grace", type=lambda text: parse_duration("--grace", text),
                         help="how long an object must be unused first, e.g. 0, 30m, 1h (default: gcGracePeriod)")
    command.add_argument("--delete", action="store_true", help="delete them; without it, only say what would go")
    command.set_defaults(run=gc)
    command = commands.add_parser("drain", help="copy a remote's objects to the other remotes, so it can be removed")
    command.add_argument("remote", help="the remote's name in the config")
    command.add_argument("location", help="the cache folder or the mountpoint")
    command.set_defaults(run=drain)
    command = commands.add_parser("scrub", help="read every stored copy back, verify it, repair bad ones "
                                  "from the cache or another replica")
    command.add_argument("location", help="the cache folder or the mountpoint")
    command.set_defaults(run=scrub)
    command = commands.add_parser("rebalance", help="move objects from the fullest remotes to the emptiest")
    command.add_argument("location", help="the cache folder or the mountpoint")
    command.set_defaults(run=rebalance)
    command = commands.add_parser("key", help="the secret that opens the keys stored in the remotes")
    key_commands = command.add_subparsers(dest="key_command", required=True)
    command = key_commands.add_parser("export", help="print the recovery key (also grouped for paper)")
    command.add_argument("location", help="the cache folder or the mountpoint")
    command.set_defaults(run=export)
    command = key_commands.add_parser("change-passphrase", help="seal the keys with a new passphrase "
                                      "(no data is re-encrypted)")
    command.add_argument("location", help="the cache folder or the mountpoint")
    command.add_argument("--new-passphrase-file", help="read the new passphrase from this file "
                         "(default: $ZERO_NEW_PASSPHRASE, else asked twice)")
    command.set_defaults(run=change_passphrase)
    command = commands.add_parser("restore", help="rebuild the state from the metadata in the remotes "
                                  "(a new machine, or a lost cache)")
    command.add_argument("cache", help="the new cache folder (must not hold a state)")
    command.add_argument("--recovery-key-file", help="a file holding the recovery key (default: "
                         "$ZERO_RECOVERY_KEY, the configured passphrase, else asked)")
    command.add_argument("--at", help="restore the newest point at or before this time (see zero snapshots)")
    command.add_argument("--fs-id", help="which filesystem, when the remotes hold several")
    command.add_argument("--take-over", action="store_true", help="with --at: make the restored point the "
                         "filesystem's writer (its next metadata continues from there) instead of a read-only copy")
    command.add_argument("--force", action="store_true", help="take the filesystem over from a writer that did not "
                         "stop cleanly and whose heartbeat is older than writerTimeout (a dead machine)")
    command.set_defaults(run=restore)
    command = commands.add_parser("fsck", help="check the state, the cache and the remotes against each other; "
                                  "--repair repairs what loses nothing")
    fsck.add_arguments(command)
    command.set_defaults(run=fsck.fsck, error_exit=fsck.OPERATIONAL_ERROR)
    command = commands.add_parser("snapshots", help="list the restore points in the remotes")
    command.add_argument("location", nargs="?", help="a cache folder or a config file (default: the config)")
    command.add_argument("--fs-id", help="which filesystem, when the remotes hold several")
    command.set_defaults(run=snapshots)
    _add_service_commands(commands)
    args = parser.parse_args(argv)
    fsutil.keep_private()  # restore writes a state, mount a log file: owner-only, as zero-fuse's
    logsetup.configure("zero", "WARNING")
    try:
        config = wiring.load_config(args.config)
        return args.run(args, config)
    except ZeroError as error:
        print(f"zero: {error}", file=sys.stderr)
        return getattr(args, "error_exit", EXIT_ERROR)
    except OSError as error:
        print(f"zero: {error.filename or ''}: {error.strerror}", file=sys.stderr)
        return getattr(args, "error_exit", EXIT_ERROR)


if __name__ == "__main__":
    sys.exit(main())
