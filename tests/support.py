"""Start the real zero-fuse and zero-worker commands for a test, and always
stop them: every mount is unmounted and every process ended, even when the
test fails. Waiting for a mount to appear polls (the kernel gives no event
for it), with a deadline.

Whether zero is mounted somewhere is read from the kernel's mount table, never
from ``os.path.ismount``: that stats the folder, which fails with ENOTCONN on
the dead mount a crashed zero-fuse leaves, so it answers False and the dead
mount would be left behind."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import yaml

from zero.fsutil import zero_mounts

BIN = Path(sys.executable).parent
MOUNT_TIMEOUT_S = 20.0


def zero_mount_ids(path) -> set[int]:
    """The kernel's ids of the zero FUSE mounts on ``path``, live or dead (other
    file systems mounted there do not count)."""
    return {mount_id for mount_id, _device in zero_mounts(path)}


def zero_mounted(path) -> bool:
    """A zero FUSE mount, live or dead, is on ``path``."""
    return bool(zero_mount_ids(path))


def unmount_if_mounted(path) -> None:
    """Lazily unmount every zero mount on ``path``; a dead one too."""
    for _ in range(len(zero_mount_ids(path))):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], check=False, capture_output=True)


def command(name: str) -> str:
    path = BIN / name
    if not path.exists():
        raise RuntimeError(f"{path} is missing: install the package (pip install -e .) into this virtualenv")
    return str(path)


class ZeroMount:
    """One filesystem: a mountpoint, a cache, a local-folder remote and a config."""

    def __init__(self, root: Path, **config):
        self.root = Path(root)
        self.mnt = self.root / "mnt"
        self.cache = self.root / "cache"
        self.remote = self.root / "remote"
        self.config_path = self.root / "config.yml"
        self.mnt.mkdir(parents=True, exist_ok=True)
        settings = {
            "remotes": [{"name": "local", "type": "local", "path": str(self.remote)}],
            "targetDiskUsage": "1GiB",
            "uploadDelay": 0.5,
            "faultInTimeout": 15,
            "minFreeDisk": "1MiB",
            "logLevel": "info",
            "metricsAddress": "",  # tests that want the endpoint give each worker a free port
        }
        settings.update(config)
        self.config_path.write_text(yaml.safe_dump(settings))
        self.fuse: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None
        self._fuse_log = self.root / "fuse.log"
        self._worker_log = self.root / "worker.log"
        self.env = dict(os.environ, ZERO_CONFIG=str(self.config_path), HOME=str(self.root))

    # --- processes ---------------------------------------------------------

    def start_fuse(self, *extra: str, wait: bool = True) -> subprocess.Popen:
        log = open(self._fuse_log, "ab")
        self.fuse = subprocess.Popen([command("zero-fuse"), str(self.mnt), str(self.cache), *extra],
                                     stdout=log, stderr=subprocess.STDOUT, env=self.env)
        log.close()
        if wait:
            self.wait_mounted()
        return self.fuse

    def wait_mounted(self) -> None:
        """Until a live zero mount is on the mountpoint: in the mount table, and
        answering (a stale one that zero-fuse is about to clear does not)."""
        deadline = time.monotonic() + MOUNT_TIMEOUT_S
        while not (zero_mounted(self.mnt) and os.path.ismount(self.mnt)):
            if self.fuse.poll() is not None:
                raise AssertionError(f"zero-fuse exited with {self.fuse.returncode}:\n{self.fuse_log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"zero-fuse did not mount within {MOUNT_TIMEOUT_S}s:\n{self.fuse_log()}")
            time.sleep(0.05)

    def start_worker(self, *extra: str, env: dict | None = None, wait: bool = True) -> subprocess.Popen:
        """Start zero-worker; with ``wait``, return once it holds the cache's worker
        lock (zero-fuse asks that lock whether a worker runs) or has exited."""
        log = open(self._worker_log, "ab")
        self.worker = subprocess.Popen([command("zero-worker"), str(self.cache), *extra],
                                       stdout=log, stderr=subprocess.STDOUT, env={**self.env, **(env or {})})
        log.close()
        if wait:
            from zero.locking import holder_pid
            deadline = time.monotonic() + MOUNT_TIMEOUT_S
            while self.worker.poll() is None and holder_pid(self.cache / "worker.lock") != self.worker.pid:
                if time.monotonic() > deadline:
                    raise AssertionError(f"zero-worker did not start within {MOUNT_TIMEOUT_S}s:\n{self.worker_log()}")
                time.sleep(0.02)
        return self.worker

    def unmount(self) -> None:
        """A clean unmount, as a user would do it; waits for zero-fuse to exit."""
        if zero_mounted(self.mnt):
            subprocess.run(["fusermount3", "-u", str(self.mnt)], check=False, capture_output=True)
        if self.fuse is not None:
            try:
                self.fuse.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.fuse.kill()
                self.fuse.wait()
            self.fuse = None

    def kill_fuse(self) -> None:
        """kill -9 zero-fuse, then clear the dead mount it leaves."""
        if self.fuse is not None:
            self.fuse.send_signal(signal.SIGKILL)
            self.fuse.wait()
            self.fuse = None
        unmount_if_mounted(self.mnt)

    def stop_worker(self) -> int | None:
        if self.worker is None:
            return None
        self.worker.send_signal(signal.SIGTERM)
        try:
            code = self.worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.worker.kill()
            code = self.worker.wait()
        self.worker = None
        return code

    def kill_worker(self) -> None:
        if self.worker is not None:
            self.worker.send_signal(signal.SIGKILL)
            self.worker.wait()
            self.worker = None

    def close(self) -> None:
        """Unmount, end both processes and clear a dead mount. Every step runs even
        when an earlier one raised; the first error is raised at the end."""
        errors = []
        for step in (self.unmount, self.kill_fuse, self.stop_worker, lambda: unmount_if_mounted(self.mnt)):
            try:
                step()
            except BaseException as error:  # noqa: BLE001 - the rest must still run
                errors.append(error)
        if zero_mounted(self.mnt):
            errors.append(AssertionError(f"{self.mnt} is still mounted after close()"))
        if errors:
            raise errors[0]

    # --- looking at what happened ---------------------------------------------

    def fuse_log(self) -> str:
        return self._fuse_log.read_text(errors="replace") if self._fuse_log.exists() else ""

    def worker_log(self) -> str:
        return self._worker_log.read_text(errors="replace") if self._worker_log.exists() else ""

    def zero(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run the `zero` admin command."""
        result = subprocess.run([command("zero"), *args], capture_output=True, text=True, env=self.env,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"zero {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def unexpected_log_lines(self, allowed: tuple[str, ...] = ()) -> list[str]:
        """Tracebacks, errors and warnings nobody expected (a test fails on them)."""
        bad = []
        for line in (self.fuse_log() + self.worker_log()).splitlines():
            if ("Traceback" in line or " ERROR " in line or " WARNING " in line or " CRITICAL " in line) \
                    and not any(text in line for text in allowed):
                bad.append(line)
        return bad


# Warnings that are the system telling the truth about a setup a test made on purpose.
EXPECTED_WARNINGS = (
    "zero-worker is not running",
    "Ignoring invalid max threads value",
)


def damage_table(state: Path, table: str) -> None:
    """Overwrite the root page of ``table`` in a state database (checkpointed first), as a
    disk that lost a block would: the file still opens, reading the table fails."""
    with sqlite3.connect(state) as other:
        other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (root,) = other.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()
        (page_size,) = other.execute("PRAGMA page_size").fetchone()
    with open(state, "r+b") as file:
        file.seek((root - 1) * page_size)
        file.write(b"\xa5" * page_size)
