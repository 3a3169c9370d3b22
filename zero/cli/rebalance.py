"""`zero rebalance <cache>`: move objects from the fullest remote to the
emptiest until their fullness (used over quota, or over weight without one)
is even, so a remote added to the pool, or a quota raised, takes its share
of what is already stored — placement alone only steers new objects."""

from __future__ import annotations

from zero.cli.common import find_cache
from zero.cli.moving import move_off
from zero.cli.progress import bar as progress_bar
from zero.errors import RemoteUnavailable
from zero.remote import layout
from zero.remote.pool import WEIGHT_UNIT_BYTES
from zero.state import objects

BATCH = 64


def rebalance(args, config) -> int:
    from zero.wiring import build_context
    from zero.worker.remotes import RemoteKeeper

    cache, _ = find_cache(args.location)
    context = build_context(config, cache)
    moved = 0
    try:
        pool = context.pool
        keeper = RemoteKeeper(context)
        for remote in pool.remotes:
            keeper.check(remote)
        keeper.refresh()
        with progress_bar(unit="object", desc="rebalancing") as bar:
            while True:
                members = [pool.member(name) for name in pool.writable_names()]
                if len(members) < 2:
                    break
                fullest = max(members, key=lambda member: member.fullness())
                emptiest = min(members, key=lambda member: member.fullness())
                key = _movable(context, fullest.remote.name, emptiest.remote.name)
                if key is None or not _evens_out(context, key, fullest, emptiest):
                    break
                _move(context, key, fullest.remote.name)
                moved += 1
                bar.update(1)
    finally:
        context.database.dispose()
    print(f"Rebalanced: moved {moved} object(s); the remotes are now as even as whole objects allow")
    return 0


def _evens_out(context, key: str, fullest, emptiest) -> bool:
    """Whether moving ``key`` leaves the emptiest remote still less full than the
    fullest one is now (the greedy rule that stops at even, whatever the units)."""
    with context.database.read() as connection:
        row = objects.get(connection, key)
    size = row.stored_bytes if row else 0
    room = emptiest.quota_bytes if emptiest.quota_bytes is not None else emptiest.weight * WEIGHT_UNIT_BYTES
    if emptiest.quota_bytes is not None and emptiest.used_bytes + size > emptiest.quota_bytes:
        return False
    return (emptiest.used_bytes + size) / room < fullest.fullness()


def _movable(context, source: str, target: str) -> str | None:
    """An object on ``source`` that ``target`` does not hold yet."""
    offset = 0
    while True:
        with context.database.read() as connection:
            keys = objects.keys_on(connection, source, BATCH + offset)[offset:]
            for key in keys:
                if target not in objects.remotes_holding(connection, key):
                    return key
        if len(keys) < BATCH:
            return None
        offset += BATCH


def _move(context, key: str, source: str) -> None:
    """Copy one object to the emptiest remote, then drop the source's copy."""
    size = move_off(context, key, source, "rebalance", always_copy=True)
    context.pool.member(source).used_bytes -= size
    try:
        context.pool.by_name(source).delete(layout.object_key(context.fs_id, key))
    except RemoteUnavailable:
        pass  # no longer counted there; the orphan sweep deletes it later
