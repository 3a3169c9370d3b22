"""fsyncWaitsForUpload: true is a promise: fsync returns success only once the
data is in the remotes. When it cannot be kept (no worker, no remote), fsync
fails loudly, with a logged reason, and the data stays safe in the cache."""

from __future__ import annotations

import errno
import os


from workerkit import drop_caches

NO_WORKER = "zero-worker is not running"


def fsync_outcome(path) -> int | None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, b"promised" * 1000)
        try:
            os.fsync(fd)
        except OSError as error:
            return error.errno
        return None
    finally:
        os.close(fd)


def test_fsync_without_a_worker_fails_loudly_instead_of_claiming_the_upload(make_mount):
    m = make_mount(worker=False, fsyncWaitsForUpload=True, allowed_log=(NO_WORKER, "fsync failed"))
    assert fsync_outcome(m.mnt / "f") == errno.EIO
    log = m.fuse_log()
    assert "fsync" in log and "start it with: zero-worker" in log and "fsyncWaitsForUpload: false" in log, log
    drop_caches(m.mnt / "f")
    assert (m.mnt / "f").read_bytes() == b"promised" * 1000  # safe in the cache all the same


def test_fsync_without_a_worker_and_without_the_promise_succeeds(make_mount):
    m = make_mount(worker=False, fsyncWaitsForUpload=False)
    assert fsync_outcome(m.mnt / "f") is None


def test_fsync_while_every_remote_is_gone_fails_after_the_timeout(make_mount):
    m = make_mount(worker=True, faultInTimeout=3, uploadDelay=0,
                   allowed_log=("Remote 'local' is unavailable", "Remote 'local' is not answering", "fsync failed",
                                "did not upload", "Could not store the last metadata changes"))
    os.rename(m.remote, m.root / "remote-away")
    assert fsync_outcome(m.mnt / "f") == errno.EIO
    assert "did not upload" in m.fuse_log()
