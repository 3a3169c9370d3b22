"""zero as a service (issue #12): `zero mount` in the foreground and with -d,
`zero umount`, `mount -t fuse.zero` through mount.zero, read-only mounts, the
systemd unit and its readiness message. Every process a test starts is
stopped and every mount cleared, even when the test fails (``service``)."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from support import MOUNT_TIMEOUT_S, ZeroMount, command, unmount_if_mounted, zero_mounted
from zero.locking import holder_pid


class Service(ZeroMount):
    """A ZeroMount driven through `zero mount`; close() also ends the supervisor
    and anything holding the cache's locks (all of them started by this test)."""

    def __init__(self, root: Path, **config):
        super().__init__(root, **config)
        self.supervisor: subprocess.Popen | None = None

    def pids(self) -> dict[str, int | None]:
        return {role: holder_pid(self.cache / f"{role}.lock") for role in ("mount", "fuse", "worker")}

    def wait_answering(self, process: subprocess.Popen | None = None) -> None:
        deadline = time.monotonic() + MOUNT_TIMEOUT_S
        while not (zero_mounted(self.mnt) and os.path.ismount(self.mnt)):
            assert process is None or process.poll() is None, f"zero mount exited with {process.returncode}"
            assert time.monotonic() < deadline, f"{self.mnt} not mounted within {MOUNT_TIMEOUT_S}s"
            time.sleep(0.05)  # the kernel gives no event a test can wait on for a new mount

    def close(self) -> None:
        unmount_if_mounted(self.mnt)
        if self.supervisor is not None and self.supervisor.poll() is None:
            self.supervisor.send_signal(signal.SIGTERM)
            try:
                self.supervisor.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.supervisor.kill()
                self.supervisor.wait()
        for pid in filter(None, self.pids().values()):
            os.kill(pid, signal.SIGKILL)
        unmount_if_mounted(self.mnt)
        assert not zero_mounted(self.mnt), f"{self.mnt} is still mounted"


@pytest.fixture
def service(tmp_path):
    made = []

    def factory(**config) -> Service:
        made.append(Service(tmp_path / f"fs{len(made)}", **config))
        return made[-1]

    yield factory
    errors = []
    for item in made:
        try:
            item.close()
        except BaseException as error:  # noqa: BLE001 - the others must still be closed
            errors.append(error)
    if errors:
        raise errors[0]


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie its new parent has not reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def test_background_mount_works_and_umount_stops_both(service):
    fs = service()
    result = fs.zero("mount", "-d", str(fs.mnt), str(fs.cache), timeout=120)
    assert "in the background" in result.stdout and "zero umount" in result.stdout
    assert zero_mounted(fs.mnt)
    (fs.mnt / "hello").write_text("hello, service\n")
    assert (fs.mnt / "hello").read_text() == "hello, service\n"
    pids = fs.pids()
    assert all(pids.values()), pids
    result = fs.zero("umount", str(fs.mnt), timeout=300)
    assert "Everything written is uploaded" in result.stdout
    assert not zero_mounted(fs.mnt)
    assert all(gone(pid) for pid in pids.values()), pids
    log = (fs.cache / "zero.log").read_text()
    assert (fs.cache / "zero.log").stat().st_mode & 0o077 == 0, "the log (file names, paths) is readable by others"
    assert "zero-worker is not running" not in log  # the worker is started (and locked) before zero-fuse
    assert "Worker stopped cleanly" in log


def test_ctrl_c_with_stdout_a_closed_pipe_still_unmounts(service):
    fs = service()
    fs.supervisor = subprocess.Popen([command("zero"), "mount", str(fs.mnt), str(fs.cache)], env=fs.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    fs.wait_answering(fs.supervisor)
    (fs.mnt / "file").write_bytes(b"x" * 100_000)
    pids = fs.pids()
    fs.supervisor.stdout.close()  # `| tee log` killed by the same Ctrl-C
    fs.supervisor.send_signal(signal.SIGINT)
    assert fs.supervisor.wait(timeout=300) == 0  # a clean stop on request: make says no "Error 130"
    assert not zero_mounted(fs.mnt)
    assert all(gone(pid) for pid in pids.values()), pids


def test_unmounting_by_hand_stops_the_worker_too(service):
    fs = service()
    fs.supervisor = subprocess.Popen([command("zero"), "mount", str(fs.mnt), str(fs.cache)], env=fs.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fs.wait_answering(fs.supervisor)
    worker = fs.pids()["worker"]
    subprocess.run(["fusermount3", "-u", str(fs.mnt)], check=True)
    assert fs.supervisor.wait(timeout=300) == 0
    assert gone(worker)


@pytest.mark.skipif(os.geteuid() != 0, reason="installing a mount(8) helper needs root")
def test_mount_t_fuse_zero_through_the_helper(service):
    fs = service()
    helper = Path("/sbin/mount.fuse.zero")
    installed = not helper.exists()
    if installed:
        helper.symlink_to(command("mount.zero"))
    try:
        result = subprocess.run(["mount", "-t", "fuse.zero", "-o", f"config={fs.config_path},_netdev,defaults",
                                 str(fs.cache), str(fs.mnt)], capture_output=True, text=True, env=fs.env, timeout=120)
    finally:
        if installed:
            helper.unlink()
    assert result.returncode == 0, result.stderr
    assert zero_mounted(fs.mnt)
    (fs.mnt / "a").write_text("fstab\n")
    assert (fs.mnt / "a").read_text() == "fstab\n"
    fs.zero("umount", str(fs.mnt), timeout=300)
    assert not zero_mounted(fs.mnt)


def test_fstab_style_helper_read_only(service):
    fs = service()
    fs.zero("mount", "-d", str(fs.mnt), str(fs.cache))
    (fs.mnt / "kept").write_text("written before\n")
    fs.zero("umount", str(fs.mnt))
    result = subprocess.run([command("mount.zero"), str(fs.cache), str(fs.mnt), "-o", "ro,nofail"],
                            capture_output=True, text=True, env=fs.env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (fs.mnt / "kept").read_text() == "written before\n"
    with pytest.raises(OSError) as raised:
        (fs.mnt / "new").write_text("no")
    assert raised.value.errno == errno.EROFS
    fs.zero("umount", str(fs.mnt))


def test_an_unknown_mount_option_is_refused_with_the_known_ones(service):
    fs = service()
    result = fs.zero("mount", "-d", "-o", "allow_other,turbo", str(fs.mnt), str(fs.cache), check=False)
    assert result.returncode == 1
    assert "unknown mount option 'turbo'" in result.stderr and "allow_other" in result.stderr
    assert not zero_mounted(fs.mnt)


def test_systemd_readiness_and_unit(service, tmp_path):
    fs = service()
    unit = fs.zero("systemd-unit", "--user", str(fs.mnt), str(fs.cache)).stdout
    assert "Type=notify" in unit and "KillMode=mixed" in unit and "WantedBy=default.target" in unit
    assert f"mount {fs.mnt} {fs.cache}" in unit and f"--config {fs.config_path}" in unit
    address = str(tmp_path / "notify")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(MOUNT_TIMEOUT_S * 2)
    try:
        fs.supervisor = subprocess.Popen([command("zero"), "mount", str(fs.mnt), str(fs.cache)],
                                         env={**fs.env, "NOTIFY_SOCKET": address},
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        message = listener.recv(4096).decode()
        assert "READY=1" in message
        assert os.path.ismount(fs.mnt)  # ready means the mount answers
        fs.supervisor.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in listener.recv(4096).decode()
        assert fs.supervisor.wait(timeout=300) == 0
    finally:
        listener.close()
