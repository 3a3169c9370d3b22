"""Run zero-worker and zero-fuse together and stop them in order.

The two programs run as children in sessions of their own, so a Ctrl-C in
the terminal reaches only the supervisor, which then stops them in the one
safe order: unmount first (zero-fuse hands what is dirty to the worker as it
unmounts), the worker after it. Their output comes to the supervisor through
a pipe and goes on to its log; a log that can no longer be written (the
``| tee`` that Ctrl-C killed first) is dropped, never a reason to stop
half-way. Every wait is on an event: the children's pidfds, the mount
table's change notification (POLLPRI on /proc/self/mountinfo), and the
signal wake-up fd.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from zero.cachedir import CacheDir
from zero.errors import ZeroError
from zero.fsutil import zero_mounts

log = logging.getLogger("zero.mount")
children_log = logging.getLogger("zero.mount.children")

READY_TIMEOUT_S = 60.0     # how long the worker may take to take its lock, and zero-fuse to mount
WORKER_STOP_TIMEOUT_S = 180.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if the supervisor dies (kill -9), so
    nothing is left running without the process that would stop it."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def program(name: str) -> str:
    """The installed zero-fuse / zero-worker beside this Python, else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def mount_ids(path: Path) -> set[int]:
    """The kernel's ids of the zero mounts on ``path``, live or dead."""
    return {mount_id for mount_id, _device in zero_mounts(path)}


def answers(path: Path) -> bool:
    """Mounted and answering (a dead mount fails stat with ENOTCONN)."""
    if not mount_ids(path):
        return False
    try:
        os.stat(path)
    except OSError:
        return False
    return True


def fusermount(path: Path, lazy: bool = False) -> str | None:
    """Unmount; None when it worked, else fusermount3's reason."""
    result = subprocess.run(["fusermount3", "-u", *(["-z"] if lazy else []), str(path)],
                            capture_output=True, text=True)
    return None if result.returncode == 0 else (result.stderr.strip() or f"exit status {result.returncode}")


class Child:
    def __init__(self, name: str, argv: list[str], env: dict | None):
        self.name = name
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, start_new_session=True,
                                        preexec_fn=_die_with_parent, env=env)
        self.pidfd = os.pidfd_open(self.process.pid)
        self._relay = threading.Thread(target=self._forward, name=f"relay-{name}", daemon=True)
        self._relay.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _forward(self) -> None:
        for line in self.process.stdout:
            children_log.info("%s", line.decode(errors="replace").rstrip("\n"))

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            self.process.send_signal(signum)

    def wait(self, timeout: float | None) -> int | None:
        """The exit status, or None if it still runs after ``timeout``."""
        if self.alive() and not select.select([self.pidfd], [], [], timeout)[0]:
            return None
        status = self.process.wait()
        self._relay.join(timeout=5)
        return status

    def close(self) -> None:
        os.close(self.pidfd)


class Supervisor:
    """zero-worker and zero-fuse for one mount: ``start()`` returns once the mount
    answers, ``run()`` until a signal or a child's exit, ``stop()`` in order."""

    def __init__(self, mount: Path, cache: CacheDir, config_path: str | None, fuse_options: list[str],
                 allow_non_empty: bool = False, force: bool = False):
        self.mount = mount
        self.force = force  # zero-worker --force: take over a dead machine's filesystem
        self.cache = cache
        self.config_path = config_path
        self.fuse_options = fuse_options
        self.allow_non_empty = allow_non_empty
        self.worker: Child | None = None
        self.fuse: Child | None = None
        self.stop_reason = ""
        self._signals = 0
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # --- signals ----------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """SIGINT, SIGTERM and SIGHUP stop; a second one stops without waiting for
        uploads. SIGPIPE is ignored: a closed log pipe must not end the clean-up."""
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, _frame) -> None:
        self._signals += 1
        if self._signals == 1:
            self.stop_reason = signal.Signals(signum).name
        else:
            log.warning("%s again: killing zero-fuse and zero-worker without waiting for uploads "
                        "(what is not uploaded stays in the cache)", signal.Signals(signum).name)
            for child in (self.fuse, self.worker):
                if child is not None:
                    child.signal(signal.SIGKILL)

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 64):
                pass
        except BlockingIOError:
            pass

    # --- start --------------------------------------------------------------------

    def _argv_tail(self) -> list[str]:
        return ["--config", self.config_path] if self.config_path else []

    def start(self) -> None:
        from zero.locking import holder_pid

        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)  # readiness is the supervisor's to tell systemd
        # The worker first, and zero-fuse only once it holds its lock: zero-fuse
        # then never says "zero-worker is not running" while it is starting.
        worker_argv = [program("zero-worker"), str(self.cache.root), *self._argv_tail()]
        self.worker = Child("zero-worker", worker_argv + (["--force"] if self.force else []), env)
        self._wait_until(lambda: holder_pid(self.cache.lock_path("worker")) == self.worker.pid,
                         "zero-worker to start")
        fuse_argv = [program("zero-fuse"), str(self.mount), str(self.cache.root), *self._argv_tail()]
        fuse_argv += [f"-o{','.join(self.fuse_options)}"] if self.fuse_options else []
        fuse_argv += ["--allow-non-empty"] if self.allow_non_empty else []
        self.fuse = Child("zero-fuse", fuse_argv, env)
        self._wait_until(lambda: answers(self.mount), f"{self.mount} to be mounted", mount_table=True)

    def _wait_until(self, done, what: str, mount_table: bool = False) -> None:
        """Until ``done()``; fails if a child exits, a stop signal comes, or the deadline passes.
        Woken by the mount table changing, a child exiting or a signal; the worker's lock
        has no event, so without ``mount_table`` it is looked at every 50 ms."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        table = open("/proc/self/mountinfo", "rb") if mount_table else None
        poller = select.poll()
        if table is not None:
            poller.register(table, select.POLLPRI | select.POLLERR)
        poller.register(self._wake_r, select.POLLIN)
        for child in filter(None, (self.worker, self.fuse)):
            poller.register(child.pidfd, select.POLLIN)
        try:
            while not done():
                if self.stop_reason:
                    raise ZeroError(f"stopped by {self.stop_reason} while waiting for {what}")
                for child in filter(None, (self.worker, self.fuse)):
                    if not child.alive():
                        raise ZeroError(f"{child.name} exited with status {child.wait(0)} before the mount was "
                                        "ready; its messages are above (or in the log file)")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ZeroError(f"gave up after {READY_TIMEOUT_S:.0f}s waiting for {what}")
                if table is not None:
                    table.seek(0)
                    table.read()  # re-arms the notification
                poller.poll(min(left, 0.05 if table is None else left) * 1000)
                self._drain_wake()
        finally:
            if table is not None:
                table.close()

    # --- run and stop ------------------------------------------------------------

    def run(self) -> str:
        """Until a stop signal or a child's exit; returns what ended it."""
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        poller.register(self.worker.pidfd, select.POLLIN)
        poller.register(self.fuse.pidfd, select.POLLIN)
        while not self.stop_reason:
            if not self.fuse.alive():
                status = self.fuse.wait(0)
                if status == 0 and not mount_ids(self.mount):
                    self.stop_reason = "unmount"  # `zero umount`, `umount` or fusermount3 -u: a clean stop
                    return f"{self.mount} was unmounted"
                return f"zero-fuse exited with status {status}"
            if not self.worker.alive():
                return f"zero-worker exited with status {self.worker.wait(0)}; unmounting, since without it " \
                       "nothing is uploaded or read back"
            poller.poll()
            self._drain_wake()
        return f"{self.stop_reason} received"

    def stop(self, unmount_timeout_s: float) -> bool:
        """Unmount, wait for zero-fuse, then stop the worker. True when nothing is
        left mounted or running."""
        if self.fuse is not None:
            self._stop_fuse(unmount_timeout_s)
        if self.worker is not None and self.worker.alive():
            log.info("Stopping zero-worker (pid %d)", self.worker.pid)
            self.worker.signal(signal.SIGTERM)
            if self.worker.wait(WORKER_STOP_TIMEOUT_S) is None:
                log.warning("zero-worker did not stop within %.0fs; killing it (what is not uploaded stays in "
                            "the cache)", WORKER_STOP_TIMEOUT_S)
                self.worker.signal(signal.SIGKILL)
                self.worker.wait(None)
        if mount_ids(self.mount):
            fusermount(self.mount, lazy=True)
        for child in filter(None, (self.fuse, self.worker)):
            child.close()
        left = bool(mount_ids(self.mount))
        if left:
            log.error("%s is still mounted; run: fusermount3 -u -z %s", self.mount, self.mount)
        return not left

    def _stop_fuse(self, timeout_s: float) -> None:
        if self.fuse.alive() and mount_ids(self.mount):
            log.info("Unmounting %s (zero-fuse hands what is not uploaded yet to the worker first)", self.mount)
            reason = fusermount(self.mount)
            if reason is not None and mount_ids(self.mount):
                log.warning("Could not unmount %s (%s): something has a file or its working folder there; "
                            "stopping zero-fuse, which detaches the mount", self.mount, reason)
                self.fuse.signal(signal.SIGTERM)
        elif self.fuse.alive():
            self.fuse.signal(signal.SIGTERM)  # it never mounted
        if self.fuse.wait(timeout_s) is None:
            log.warning("zero-fuse did not exit within %.0fs of the unmount; stopping it", timeout_s)
            self.fuse.signal(signal.SIGTERM)
            if self.fuse.wait(30) is None:
                self.fuse.signal(signal.SIGKILL)
                self.fuse.wait(None)
