"""The remote key space: every key built by zero/remote/layout.py parses back, foreign keys do not."""

import pytest

from zero.remote import layout
from zero.remote.base import check_key

FS = "3f2a9c0e5b7d4e1fa0b1c2d3e4f5a6b7"
DIGEST = "ab" + "0123456789abcdef" * 3 + "0123456789abcd"


def test_object_key_shape_and_round_trip():
    key = layout.object_key(FS, DIGEST)
    assert key == f"{FS}/objects/ab/{DIGEST}"
    assert key.startswith(layout.objects_prefix(FS))
    check_key(key)
    assert layout.parse_object_key(FS, key) == DIGEST


@pytest.mark.parametrize("key", [
    f"{FS}/objects/cd/{DIGEST}",            # wrong shard folder
    f"{FS}/objects/{DIGEST}",               # no shard folder
    f"{FS}/objects/ab/{DIGEST}/extra",      # deeper than an object
    f"{FS}/objects/ab/{DIGEST.upper()}",    # not lowercase hex
    f"{FS}/objects/ab/ab-not-hex",
    f"{FS}/objects/ab/",
    f"other/objects/ab/{DIGEST}",           # another filesystem
    f"{FS}x/objects/ab/{DIGEST}",
    f"{FS}/meta/snap-{0:020d}",
    f"{FS}/zero.json",
    "",
])
def test_foreign_keys_are_not_objects(key):
    assert layout.parse_object_key(FS, key) is None


@pytest.mark.parametrize("digest", ["", "a", "ab", "AB12", "ab/cd", "../ab", "ab 12", "g" * 10, "a" * 129])
def test_bad_digests_are_refused(digest):
    with pytest.raises(ValueError):
        layout.object_key(FS, digest)


@pytest.mark.parametrize("fs_id", ["", "a/b", ".hidden", "..", "a b", None, "fs\0"])
def test_bad_filesystem_ids_are_refused(fs_id):
    for build in (layout.objects_prefix, layout.marker_key, layout.lock_key, layout.keys_prefix, layout.meta_prefix):
        with pytest.raises(ValueError):
            build(fs_id)


def test_the_filesystems_own_files():
    assert layout.marker_key(FS) == f"{FS}/zero.json"
    assert layout.lock_key(FS) == f"{FS}/lock"
    assert layout.sealed_key_key(FS, "data") == f"{FS}/keys/data"
    assert layout.sealed_key_key(FS, "data").startswith(layout.keys_prefix(FS))
    for key in (layout.marker_key(FS), layout.lock_key(FS), layout.sealed_key_key(FS, "recovery")):
        check_key(key)
        assert layout.parse_object_key(FS, key) is None
    for name in ("", "a/b", ".x", "../up"):
        with pytest.raises(ValueError):
            layout.sealed_key_key(FS, name)


@pytest.mark.parametrize("sequence", [0, 1, 42, 10**19, 10**20 - 1])
def test_meta_keys_round_trip(sequence):
    snapshot, journal = layout.snapshot_key(FS, sequence), layout.journal_key(FS, sequence)
    assert snapshot.startswith(f"{FS}/meta/snap-") and snapshot.startswith(layout.snapshots_prefix(FS))
    assert journal.startswith(f"{FS}/meta/journal-") and journal.startswith(layout.journals_prefix(FS))
    check_key(snapshot)
    check_key(journal)
    assert layout.parse_snapshot_key(FS, snapshot) == sequence
    assert layout.parse_journal_key(FS, journal) == sequence
    assert layout.parse_snapshot_key(FS, journal) is None
    assert layout.parse_journal_key(FS, snapshot) is None


def test_meta_keys_sort_by_sequence():
    keys = [layout.snapshot_key(FS, n) for n in (10, 9, 100, 1)]
    assert [layout.parse_snapshot_key(FS, key) for key in sorted(keys)] == [1, 9, 10, 100]


@pytest.mark.parametrize("sequence", [-1, 10**20, 1.5, "3", True])
def test_bad_sequences_are_refused(sequence):
    with pytest.raises(ValueError):
        layout.snapshot_key(FS, sequence)
    with pytest.raises(ValueError):
        layout.journal_key(FS, sequence)


@pytest.mark.parametrize("key", [f"{FS}/meta/snap-1", f"{FS}/meta/snap-{'0' * 19}x", f"{FS}/meta/snap-",
                                 f"other/meta/snap-{0:020d}", f"{FS}/meta/snap-{0:020d}/x"])
def test_foreign_meta_keys(key):
    assert layout.parse_snapshot_key(FS, key) is None
