"""Moving an object's copy off one remote (zero drain, zero rebalance): the
other remotes get its replicas, verified by the codec on the way so a corrupt
copy is not spread, before the copy on the source stops counting."""

from __future__ import annotations

from zero.errors import RemoteUnavailable, ZeroError
from zero.remote import layout
from zero.state import objects, remotes


def move_off(context, key: str, source: str, command: str, always_copy: bool) -> int:
    """Make ``key`` durable without ``source`` (copying it only when the other
    holders fall short of replicas, unless ``always_copy``), then stop counting
    the copy on ``source``. Returns the object's stored size."""
    pool = context.pool
    remote_key = layout.object_key(context.fs_id, key)
    with context.database.read() as connection:
        holders = objects.remotes_holding(connection, key)
        good = objects.good_holders(connection, key)  # a quarantined copy is not one of the replicas
        row = objects.get(connection, key)
        pool.set_draining(remotes.draining_names(connection))  # another drain may have begun since this one
    others = [name for name in good if name != source]
    size = row.stored_bytes if row else 0
    added: list[str] = []
    if always_copy or len([name for name in others if name in pool.durable_names()]) < context.config.replicas:
        def verified(blob: bytes) -> bytes:
            context.codec.open(blob, expected_key=key)  # a corrupt copy is not spread; the pool tries the next
            return blob

        blob = pool.get(remote_key, holders, decode=verified, suspect=set(holders) - set(good))
        try:
            added = pool.put(remote_key, blob, holders=others, exclude=[source])
        except RemoteUnavailable as error:
            raise ZeroError(f"could not copy {remote_key} off {source}: {error}; run zero {command} again "
                            "once the other remotes answer") from None
        size = size or len(blob)
    with context.database.write() as connection:
        current = objects.get(connection, key)
        if current is None or (row is not None and current.created != row.created):
            # Collected while it was copied (and perhaps stored anew since, with copies of its own):
            # the copies just made are orphans the next sweep deletes.
            return size
        draining = remotes.draining_names(connection)
        added = [name for name in added if name not in draining]  # record_copies would drop them anyway
        kept = {name for name in objects.good_holders(connection, key) if name != source and name not in draining}
        if len(kept | set(added)) < context.config.replicas:
            # A remote it copied to, or held a copy on, began draining meanwhile: the copy on
            # the source still counts, and the next pass places the object elsewhere.
            raise ZeroError(f"could not keep {context.config.replicas} copies of {remote_key} without {source}: "
                            f"{', '.join(sorted(draining))} began draining meanwhile; run zero {command} again")
        for name in added:
            objects.record_copy(connection, key, name, size)
        objects.forget_copy(connection, key, source)
    return size
