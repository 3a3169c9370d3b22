"""`zero mount <mount> <cache>`: zero-worker and zero-fuse together, in the
foreground until Ctrl-C, or detached with ``-d`` (a rotated log file and a pid
file); `mount.zero <cache> <mount> -o ...`, the helper mount(8) and
/etc/fstab run for the type ``fuse.zero``."""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import subprocess
import sys
from pathlib import Path

from zero.cachedir import CacheDir
from zero.cli.supervisor import Supervisor, answers, log
from zero.errors import MountError, ZeroError

LOG_FILE_NAME = "zero.log"          # in the cache folder, for -d without --log-file
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 5
UNMOUNT_TIMEOUT_S = 600.0           # zero-fuse waits for the worker to upload what is dirty

# Options mount(8) and fstab use that are not zero-fuse's business.
FSTAB_ONLY = {"defaults", "auto", "noauto", "user", "users", "nouser", "owner", "_netdev", "nofail", "exec",
              "noexec", "suid", "nosuid", "dev", "nodev", "async", "sync", "relatime", "noatime", "atime",
              "strictatime", "nodiratime", "background"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mountpoint", help="an existing empty folder")
    parser.add_argument("cache", help="the cache folder (created if missing)")
    parser.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS",
                        help="comma-separated mount options: allow_other, allow_root, ro, rw, auto_unmount "
                             "(fstab's defaults, _netdev, nofail, ... are accepted and ignored)")
    parser.add_argument("-d", "--background", action="store_true",
                        help="detach once mounted; stop with: zero umount <mountpoint>")
    parser.add_argument("--log-file", help=f"log here, rotated at 10 MiB (-d: default <cache>/{LOG_FILE_NAME})")
    parser.add_argument("--pid-file", help="also write the supervisor's pid here (removed when it stops)")
    parser.add_argument("--allow-non-empty", action="store_true", help="mount over a non-empty folder")
    parser.add_argument("--force", action="store_true", help="take the filesystem over from a dead machine "
                        "(its writer lease did not stop cleanly and its heartbeat is older than writerTimeout)")
    parser.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)


def split_options(values: list[str]) -> tuple[list[str], dict[str, str]]:
    """-o values -> (zero-fuse's options, zero's own key=value options such as config=)."""
    from zero.fuse.mountpoint import MOUNT_OPTIONS

    fuse, own = [], {}
    for value in values:
        for option in filter(None, (part.strip() for part in value.split(","))):
            name, _, setting = option.partition("=")
            if name in MOUNT_OPTIONS:
                fuse.append(option)
            elif name in ("config", "log_file") and setting:
                own[name] = setting
            elif name in FSTAB_ONLY or name.startswith(("x-", "comment=")):
                continue
            else:
                raise MountError(f"unknown mount option {option!r}; zero accepts {', '.join(sorted(MOUNT_OPTIONS))}, "
                                 "config=PATH and log_file=PATH")
    return fuse, own


class _QuietStream(logging.StreamHandler):
    """stderr that goes silent once it cannot be written (a pipe whose reader died)."""

    def emit(self, record) -> None:
        if self.stream is None:
            return
        try:
            self.stream.write(self.format(record) + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            self.stream = None


class _Formatter(logging.Formatter):
    """The supervisor's own lines get time and role; the children's come formatted already."""

    def format(self, record) -> str:
        if record.name == "zero.mount.children":
            return record.getMessage()
        return super().format(record)


def configure_logging(log_file: str | None, to_stderr: bool) -> None:
    handlers: list[logging.Handler] = []
    if to_stderr:
        handlers.append(_QuietStream(sys.stderr))
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.handlers.RotatingFileHandler(log_file, maxBytes=LOG_MAX_BYTES,
                                                             backupCount=LOG_BACKUPS))
    logging.raiseExceptions = False  # a log that cannot be written is dropped, not reported on stderr
    for handler in handlers:
        handler.setFormatter(_Formatter("%(asctime)s zero-mount %(levelname)s %(message)s"))
    log.handlers[:] = handlers
    log.propagate = False
    log.setLevel(logging.INFO)


def mount(args, config) -> int:
    fuse_options, own = split_options(args.options)
    config_path = own.get("config") or (config.source if config.source != "embedded default" else None)
    if own.get("config"):
        from zero import wiring
        config = wiring.load_config(own["config"])
    mountpoint = Path(args.mountpoint).expanduser().absolute()
    cache = CacheDir(Path(args.cache).expanduser())
    log_file = args.log_file or own.get("log_file")
    if args.background:
        return _detach(args, mountpoint, cache, config_path, fuse_options,
                       log_file or str(cache.root / LOG_FILE_NAME))
    return _foreground(args, mountpoint, cache, config, config_path, fuse_options, log_file)


def _detach(args, mountpoint: Path, cache: CacheDir, config_path, fuse_options, log_file: str) -> int:
    """Start a foreground `zero mount` in a session of its own and return once it
    says the mount answers (or why it could not)."""
    cache.prepare()
    ready_r, ready_w = os.pipe()
    argv = [sys.executable, "-c", "import sys; from zero.cli import main; sys.exit(main())"]
    argv += ["--config", config_path] if config_path else []
    argv += ["mount", str(mountpoint), str(cache.root), "--log-file", log_file, "--ready-fd", str(ready_w)]
    argv += [f"-o{','.join(fuse_options)}"] if fuse_options else []
    argv += ["--pid-file", args.pid_file] if args.pid_file else []
    argv += ["--allow-non-empty"] if args.allow_non_empty else []
    argv += ["--force"] if args.force else []
    with open(os.devnull, "rb") as devnull_in, open(log_file, "ab") as early_errors:
        daemon = subprocess.Popen(argv, stdin=devnull_in, stdout=early_errors, stderr=early_errors,
                                  start_new_session=True, pass_fds=(ready_w,))
    os.close(ready_w)
    with os.fdopen(ready_r, "rb") as ready:
        answer = ready.read().decode(errors="replace").strip()
    if answer == "ready":
        print(f"zero is mounted at {mountpoint} (cache {cache.root}), in the background (pid {daemon.pid}); "
              f"log: {log_file}; stop it with: zero umount {mountpoint}")
        return 0
    daemon.wait()
    raise ZeroError(f"could not mount {mountpoint}: {answer or 'the background process exited'}; "
                    f"the log is {log_file}")


def _tell_ready(args, message: str) -> None:
    if args.ready_fd is None:
        return
    try:
        os.write(args.ready_fd, message.encode())
        os.close(args.ready_fd)
    except OSError:
        pass
    args.ready_fd = None


def _foreground(args, mountpoint: Path, cache: CacheDir, config, config_path, fuse_options, log_file) -> int:
    from zero.cli.umount import describe_backlog
    from zero.locking import PidLock
    from zero.cli import sdnotify_ready

    configure_logging(log_file, to_stderr=args.ready_fd is None)
    cache.prepare()
    lock = PidLock(cache.lock_path("mount"), "zero mount")
    supervisor = Supervisor(mountpoint, cache, config_path, fuse_options, args.allow_non_empty,
                            force=args.force)
    supervisor.install_signal_handlers()
    try:
        lock.acquire()
        if answers(mountpoint):
            raise MountError(f"{mountpoint} is already mounted; unmount it first (zero umount {mountpoint})")
        if args.pid_file:
            Path(args.pid_file).write_text(f"{os.getpid()}\n")
        supervisor.start()
    except ZeroError as error:
        log.error("%s", error)
        _tell_ready(args, str(error))
        supervisor.stop(UNMOUNT_TIMEOUT_S)
        lock.release()
        return 1
    log.info("zero is mounted at %s (cache %s); %s", mountpoint, cache.root,
             "stop it with: zero umount " + str(mountpoint) if args.ready_fd is not None
             else "press Ctrl-C to unmount and stop")
    _tell_ready(args, "ready")
    sdnotify_ready.notify("READY=1", f"STATUS=Mounted at {mountpoint}")
    why = supervisor.run()
    by_request = bool(supervisor.stop_reason)
    log.info("Stopping: %s", why)
    sdnotify_ready.notify("STOPPING=1")
    clean = supervisor.stop(UNMOUNT_TIMEOUT_S)
    log.info("%s", describe_backlog(cache, config))
    if args.pid_file:
        Path(args.pid_file).unlink(missing_ok=True)
    lock.release()
    # A stop that was asked for and went cleanly is a success: `make run` then
    # ends without "Error 130".
    return 0 if clean and by_request else 1


def mount_helper(argv=None) -> int:
    """mount.zero <cache> <mountpoint> [-o options] [-n] [-s] [-v] [-f] [-t fuse.zero]: what
    mount(8) runs for `mount -t fuse.zero` and fstab lines of that type. Detaches."""
    from zero.cli import main

    parser = argparse.ArgumentParser(prog="mount.zero", description="mount(8) helper for zero (type fuse.zero)")
    parser.add_argument("cache")
    parser.add_argument("mountpoint")
    parser.add_argument("-o", dest="options", action="append", default=[])
    parser.add_argument("-t", dest="type", default="fuse.zero")
    for flag in ("-n", "-s", "-v", "-f", "-r", "-w"):
        parser.add_argument(flag, action="store_true")
    args = parser.parse_args(argv)
    if args.f:
        return 0  # "fake": mount(8) asks only what would happen
    options = list(args.options) + (["ro"] if args.r else [])
    command = ["mount", args.mountpoint, args.cache, "-d"] + [f"-o{value}" for value in options]
    return main(command)
