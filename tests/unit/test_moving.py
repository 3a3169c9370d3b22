"""zero drain and zero rebalance move an object's copy off a remote
(zero/cli/moving.py): what they record when the collector takes the object
in the middle of the move."""

from __future__ import annotations

import time

import pytest

from test_metadata_backup import make_context, make_inode, upload_all, write_chunk  # noqa: F401
from zero.cli.moving import move_off
from zero.errors import ZeroError
from zero.state import chunks, objects, remotes
from zero.worker.uploader import Uploader


def uploaded_file(context) -> tuple[int, str, str]:
    """A one-chunk file, uploaded: (its inode, its object's key, the remote holding it)."""
    ino = make_inode(context, b"f")
    write_chunk(context, ino, 0, b"bytes to move")
    upload_all(context)
    with context.database.read() as connection:
        (key,) = objects.known_keys(connection)
        (source,) = objects.remotes_holding(connection, key)
    return ino, key, source


def test_a_move_records_no_copy_of_an_object_collected_meanwhile(make_context):
    context = make_context(remotes=("a", "b"))
    ino, key, source = uploaded_file(context)
    target = next(remote for remote in context.pool.remotes if remote.name != source)
    put = target.put

    def collected_while_copying(remote_key, blob):
        put(remote_key, blob)
        with context.database.write() as connection:  # the file is deleted and its object collected
            chunks.delete_chunk(connection, ino, 0)
            objects.mark_unreferenced(connection, time.time() - 10)
            assert [claimed for claimed, _remotes in objects.claim_garbage(connection, time.time())] == [key]

    target.put = collected_while_copying
    move_off(context, key, source, "rebalance", always_copy=True)
    with context.database.read() as connection:
        assert objects.get(connection, key) is None
        assert objects.remotes_holding(connection, key) == [], "a copy was recorded for an object with no row"


def test_a_move_onto_a_remote_whose_drain_began_meanwhile_keeps_the_source_copy(make_context):
    """Two drains at once (a review): this one's pool still took the other remote for
    writable, copied there, and the copy was not recorded (record_copies drops copies
    on draining remotes) while the source's copy was forgotten: no copy recorded at all."""
    context = make_context(remotes=("a", "b"))
    ino, key, source = uploaded_file(context)
    target = next(remote.name for remote in context.pool.remotes if remote.name != source)
    with context.database.write() as connection:  # `zero drain <target>`, begun after this one
        remotes.set_draining(connection, target, True)
    with pytest.raises(ZeroError, match="run zero drain again"):
        move_off(context, key, source, "drain", always_copy=False)
    with context.database.read() as connection:
        assert objects.remotes_holding(connection, key) == [source]


def test_a_chunk_whose_copy_went_to_a_remote_drained_meanwhile_is_not_clean_short_of_replicas(
        make_context, monkeypatch):
    """replicas 2: a group sent a chunk to two remotes and one began draining during the
    send (a review). Its copy is not recorded; the chunk was marked clean with one copy,
    fsync returned, and nothing would ever upload it again."""
    context = make_context(remotes=("a", "b", "c"), replicas=2)
    ino = make_inode(context, b"f")
    write_chunk(context, ino, 0, b"fsynced bytes")
    drained = []
    for remote in context.pool.remotes:
        def put_then_drain(key, blob, put=remote.put, name=remote.name):
            put(key, blob)
            if "/objects/" in key and not drained:  # `zero drain <name>` commits its mark during the send
                drained.append(name)
                with context.database.write() as connection:
                    remotes.set_draining(connection, name, True)
        monkeypatch.setattr(remote, "put", put_then_drain)
    uploader = Uploader(context)
    for row in uploader.due(hurry=True):
        uploader.upload(row)
    with context.database.read() as connection:
        row = chunks.get(connection, ino, 0)
        copies = objects.good_holders(connection, row.object_key) if row.object_key else []
    assert drained and (row.state != "clean" or len(copies) >= 2), (row.state, copies)
    monkeypatch.undo()
    upload_all(context)  # the next group places it on the two remotes not draining
    with context.database.read() as connection:
        row = chunks.get(connection, ino, 0)
        assert row.state == "clean" and len(set(objects.good_holders(connection, row.object_key)) - set(drained)) >= 2
