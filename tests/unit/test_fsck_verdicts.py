"""The pieces of zero fsck that decide a verdict: exit codes as e2fsck's bits,
paths on a damaged tree, and whether a remote's listing holds an object."""

from __future__ import annotations

import pytest

from zero.meta.fsck import CheckResult, Finding, Outcome
from zero.meta.fsck.findings import Names
from zero.meta.fsck.remotes import Copy, RemoteView
from zero.remote import identity, layout
from zero.remote.local import LocalRemote
from zero.state import namespace, objects, remotes
from zero.state.db import open_database

FS_ID = "f" * 32
KEY = "ab" + "c" * 62


@pytest.fixture
def database(tmp_path):
    database = open_database(tmp_path / "state.sqlite3")
    yield database
    database.dispose()


def outcome(*findings: Finding, skipped: str = "", on_request: bool = False) -> Outcome:
    return Outcome([CheckResult(len, list(findings), skipped, on_request)])


@pytest.mark.parametrize("findings, skipped, on_request, code", [
    ((), "", False, 0),
    ((Finding("a", repaired=True),), "", False, 1),
    ((Finding("a"),), "", False, 4),
    ((Finding("a", repaired=True), Finding("b")), "", False, 5),
    ((), "remote 'x' skipped", False, 8),
    ((), "skipped on request (--no-remote)", True, 0),
    ((Finding("a"),), "remote 'x' skipped", False, 12),
])
def test_exit_codes_are_e2fsck_bits_that_add_up(findings, skipped, on_request, code):
    assert outcome(*findings, skipped=skipped, on_request=on_request).exit_code == code


def test_paths_end_at_a_loop_or_a_missing_name_instead_of_looping(database):
    with database.write() as connection:
        for parent, name, ino in [(1, b"docs", 2), (2, b"new\nline", 3), (4, b"a", 5), (5, b"b", 4), (9, b"x", 6)]:
            namespace.insert_dentry(connection, parent, name, ino)
        namespace.insert_dentry(connection, 1, b"second", 3)
        names = Names(connection)
    assert names.path(3) == "/docs/new\\nline"
    assert names.paths(3) == ["/docs/new\\nline", "/second"]
    assert names.path(5) == "<a loop at inode 5>/b/a"
    assert names.path(6) == "<inode 9, which has no name>/x"
    assert names.path(7) == "<inode 7, which has no name>"


def test_a_listing_counts_only_under_the_remotes_own_marker(tmp_path, database):
    remote = LocalRemote("home", tmp_path / "remote")
    remote.prepare()
    marker = identity.new_marker(FS_ID)
    identity.write(remote, marker)
    remote.put(layout.object_key(FS_ID, KEY), b"sealed")
    with database.write() as connection:
        remotes.record_identity(connection, "home", marker.remote_id)
        for key in (KEY, "ab" + "d" * 62):
            objects.record_intent(connection, key, 6)
            objects.record_copy(connection, key, "home", 6)
        objects.record_copy(connection, KEY, "gone", 6)  # a remote since removed from the config

    view = RemoteView([remote], FS_ID)
    with database.read() as connection:
        view.load(connection)
    assert view.copy(KEY, ["home"]) is Copy.PRESENT
    assert view.copy("ab" + "d" * 62, ["home"]) is Copy.ABSENT
    assert view.copy("ab" + "d" * 62, ["home", "gone"]) is Copy.UNKNOWN
    assert "remote 'gone' skipped: it is not in the config" in view.skip_reason()

    identity.write(remote, identity.new_marker(FS_ID))  # swapped for another remote of the same filesystem
    view = RemoteView([remote], FS_ID)
    with database.read() as connection:
        view.load(connection)
    assert view.copy(KEY, ["home"]) is Copy.UNKNOWN
    assert "it holds another remote's marker" in view.skip_reason()
