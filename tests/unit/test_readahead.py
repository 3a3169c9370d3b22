"""zero/fuse/readahead.py against a stand-in sysfs: raise, never lower, and
carry on with a sentence when it may not (zero-fuse not run by root)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from zero.fuse import readahead


@pytest.fixture
def bdi(tmp_path, monkeypatch):
    """A stand-in /sys/class/bdi holding the mount's device 0:52 (and an older, dead mount's 0:40)."""
    for device in ("0:40", "0:52"):
        (tmp_path / device).mkdir()
        (tmp_path / device / "read_ahead_kb").write_text("128\n")
    monkeypatch.setattr(readahead, "SYSFS_BDI", tmp_path)
    monkeypatch.setattr(readahead, "zero_mounts", lambda path: [(30, "0:40"), (31, "0:52")])
    return tmp_path


def test_the_newest_mount_reads_ahead_as_much_as_asked(bdi):
    readahead.raise_readahead("/mnt/zero", 1024)
    assert (bdi / "0:52" / "read_ahead_kb").read_text() == "1024"
    assert (bdi / "0:40" / "read_ahead_kb").read_text() == "128\n"


def test_a_larger_read_ahead_set_on_purpose_stays(bdi):
    (bdi / "0:52" / "read_ahead_kb").write_text("4096\n")
    readahead.raise_readahead("/mnt/zero", 1024)
    assert (bdi / "0:52" / "read_ahead_kb").read_text() == "4096\n"


def test_without_permission_it_says_so_and_goes_on(bdi, caplog, monkeypatch):
    def refuse(path, text):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(Path, "write_text", refuse)  # as sysfs answers a user other than root
    with caplog.at_level(logging.INFO, logger="zero.fuse.readahead"):
        readahead.raise_readahead("/mnt/zero", 1024)
    assert (bdi / "0:52" / "read_ahead_kb").read_text() == "128\n"
    assert "Could not raise the kernel's read-ahead for /mnt/zero to 1024 KiB" in caplog.text
    assert "Permission denied" in caplog.text and "as root" in caplog.text


def test_not_mounted_through_the_kernel_does_nothing(bdi, monkeypatch):
    monkeypatch.setattr(readahead, "zero_mounts", lambda path: [])
    readahead.raise_readahead("/mnt/zero", 1024)
    assert (bdi / "0:52" / "read_ahead_kb").read_text() == "128\n"
