"""zero.fsutil: the file-system helpers every part of zero shares."""

import os

import pytest

from zero.fsutil import file_system_type, sync_file_system, syncfs_is_trusted


def test_the_file_system_type_is_the_innermost_mount_holding_the_path(tmp_path):
    assert file_system_type("/proc/self") == "proc"
    assert file_system_type("/") != ""
    assert file_system_type(str(tmp_path)) == file_system_type(str(tmp_path / "not-made-yet"))


def test_syncfs_is_trusted_only_where_it_flushes_everything():
    assert not syncfs_is_trusted("/proc")


def test_sync_file_system_runs_and_names_a_missing_folder(tmp_path):
    sync_file_system(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        sync_file_system(str(tmp_path / "gone"))
