"""zero drain and zero rebalance move an object's copy off a remote
(zero/cli/moving.py): what they record when the collector takes the object
in the middle of the move."""

from __future__ import annotations

import time

from test_metadata_backup import make_context, make_inode, upload_all, write_chunk  # noqa: F401
from zero.cli.moving import move_off
from zero.state import chunks, objects


def test_a_move_records_no_copy_of_an_object_collected_meanwhile(make_context):
    context = make_context(remotes=("a", "b"))
    ino = make_inode(context, b"f")
    write_chunk(context, ino, 0, b"bytes to move")
    upload_all(context)
    with context.database.read() as connection:
        (key,) = objects.known_keys(connection)
        (source,) = objects.remotes_holding(connection, key)
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
