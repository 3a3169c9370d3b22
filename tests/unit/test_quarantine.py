"""The quarantine of bad remote copies: the rules in the state (never durable,
never a dedup target, still the collector's to delete, lifted by a new copy),
and the worker's steps that rely on them, driven by hand."""

from __future__ import annotations

import sqlite3


from test_state import database, ino, make_file, path, set_schema_version, to_clean, to_remote  # noqa: F401
from test_worker_steps import (  # noqa: F401
    chunk_data, context, counter, evict_all, fuse_write, make_context, remote_file, state_of, upload_all,
)
from test_worker_steps import make_file as make_worker_file
from zero.meta.scrub import Scrubber, damage_report
from zero.state import chunks, db, objects, quarantine, schema
from zero.state.schema import ChunkState
from zero.worker.fetcher import Fetcher


def place(database, key: str, *remotes: str) -> None:
    with database.write() as connection:
        objects.record_intent(connection, key, 100)
        for remote in remotes:
            objects.record_copy(connection, key, remote, 120)


def put_aside(database, key: str, remote: str) -> bool:
    with database.write() as connection:
        return quarantine.record(connection, key, remote, "failed authentication")


# --- the rules in the state ---------------------------------------------------------------------


def test_only_a_placed_copy_is_quarantined_and_only_once(database):
    place(database, "k1", "home")
    assert put_aside(database, "k1", "office") is False  # no copy there to be bad
    assert put_aside(database, "k1", "home") is True
    assert put_aside(database, "k1", "home") is False
    with database.read() as connection:
        assert quarantine.bad_remotes(connection, "k1") == {"home"}
        assert quarantine.count(connection) == 1


def test_a_quarantined_copy_is_neither_durable_nor_a_dedup_target(database, ino):
    to_clean(database, ino, 0, key="k1")
    place(database, "k1", "home", "office")
    put_aside(database, "k1", "home")
    with database.read() as connection:
        assert objects.good_holders(connection, "k1") == ["office"]
        assert sorted(objects.remotes_holding(connection, "k1")) == ["home", "office"]  # still read, and deleted
        assert objects.holders_among(connection, "k1", ["home", "office"]) == 1
        assert chunks.eviction_candidates(connection, 10, ["home", "office"], replicas=2) == []
        assert len(chunks.eviction_candidates(connection, 10, ["home", "office"], replicas=1)) == 1


def test_storing_the_object_again_lifts_the_quarantine(database):
    place(database, "k1", "home")
    put_aside(database, "k1", "home")
    place(database, "k1", "home")  # a repair, or an upload of the same bytes
    with database.read() as connection:
        assert quarantine.bad_remotes(connection, "k1") == set()
        assert objects.good_holders(connection, "k1") == ["home"]


def test_a_chunk_is_damaged_only_when_no_good_copy_is_left_anywhere(database, ino):
    to_remote(database, ino, 0, key="evicted")
    to_clean(database, ino, 1, key="cached")
    to_remote(database, ino, 2, key="replicated")
    place(database, "evicted", "home")
    place(database, "cached", "home")
    place(database, "replicated", "home", "office")
    for key in ("evicted", "cached", "replicated"):
        put_aside(database, key, "home")
    with database.read() as connection:
        damaged = damage_report(connection, 4096)
        # A quarantined only copy is damage, not a config problem: removing remotes strands nothing here.
        assert chunks.stranded(connection, ["home", "office"]) == (0, 0)
    assert [(item.path, item.first_byte, item.last_byte, item.object_key) for item in damaged] == \
        [("/data", 0, 4095, "evicted")]


def test_the_collector_and_a_drain_take_the_quarantine_row_with_the_copy(database):
    place(database, "gone", "home")
    place(database, "moved", "home", "office")
    put_aside(database, "gone", "home")
    put_aside(database, "moved", "home")
    with database.write() as connection:
        objects.mark_unreferenced(connection, now=1.0)
        claimed = objects.claim_garbage(connection, older_than=2.0)
        objects.forget_copy(connection, "moved", "home")
    assert ("gone", ["home"]) in claimed  # the bad copy is deleted from the remote too
    with database.read() as connection:
        assert quarantine.rows(connection) == []


def test_a_format_3_state_gains_the_quarantine_table(database, path):  # noqa: F811
    database.dispose()
    with sqlite3.connect(path) as raw:
        raw.execute("DROP TABLE quarantine")
    set_schema_version(path, "3")
    upgraded = db.open_database(path)
    try:
        assert db.format_settings(upgraded)["schema_version"] == str(schema.SCHEMA_VERSION)
        place(upgraded, "k1", "home")
        assert put_aside(upgraded, "k1", "home") is True
    finally:
        upgraded.dispose()


# --- the worker's steps ------------------------------------------------------------------------


def flip(path) -> None:
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    path.write_bytes(bytes(damaged))


def opens(context, key: str) -> bool:
    try:
        context.codec.open(remote_file(context, key).read_bytes(), expected_key=key)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not a good copy"
        return False


def stored_then_damaged(context, name: bytes, seed: int, evicted: bool) -> tuple[int, str, bytes, bytes]:
    """A one-chunk file uploaded (and evicted), its object's copy then flipped:
    (ino, key, the chunk's bytes, the good copy's bytes)."""
    data = chunk_data(seed)
    key = context.codec.object_key(data)
    ino = make_worker_file(context, name)
    fuse_write(context, ino, 0, data)
    upload_all(context)
    if evicted:
        evict_all(context)
    original = remote_file(context, key).read_bytes()
    flip(remote_file(context, key))
    return ino, key, data, original


def test_a_fetch_quarantines_a_corrupt_copy_and_an_upload_of_the_same_bytes_replaces_it(context):
    first, key, data, _ = stored_then_damaged(context, b"a", 1, evicted=True)
    Fetcher(context, copies_read=Scrubber(context).judge).fetch(first, 0)
    with context.database.read() as connection:
        assert quarantine.bad_remotes(connection, key) == {"local"}

    second = make_worker_file(context, b"b")
    fuse_write(context, second, 0, data)
    upload_all(context)
    assert counter(context, "dedup_hits") == 0, "the upload counted the corrupt copy"
    assert opens(context, key)
    with context.database.read() as connection:
        assert quarantine.bad_remotes(connection, key) == set()


def test_a_scrub_finds_a_corrupt_copy_and_repairs_it_from_the_cache(context):
    ino, key, _, _ = stored_then_damaged(context, b"a", 2, evicted=False)

    summary = Scrubber(context).scrub_all()

    assert (summary.checked, summary.bad, summary.repaired, summary.unrepairable) == (1, 1, 1, 0)
    assert opens(context, key) and summary.damage == []
    assert state_of(context, ino, 0) == ChunkState.CLEAN


def test_a_scrub_reports_what_it_cannot_repair_and_a_copy_put_back_is_lifted(context):
    _, key, _, original = stored_then_damaged(context, b"lost", 3, evicted=True)

    summary = Scrubber(context).scrub_all()
    assert (summary.bad, summary.repaired, summary.unrepairable) == (1, 0, 1)
    assert [item.path for item in summary.damage] == ["/lost"]

    remote_file(context, key).write_bytes(original)  # put back from a backup
    assert Scrubber(context).scrub_all().damage == []
    with context.database.read() as connection:
        assert quarantine.rows(connection) == []
