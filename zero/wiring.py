"""Builds what the processes need from a Config: the state, the remote pool
and the codec, put together as a worker context. The only module that knows
all the layers below it."""

from __future__ import annotations

import os

from zero.cachedir import CacheDir


def build_context(config, cache: CacheDir):
    from zero.remote.codec import Codec
    from zero.remote.pool import build_pool
    from zero.state import db as state_db
    from zero.worker.context import WorkerContext

    database = state_db.open_database(config.database_path(cache.root), config.chunk_size_bytes,
                                      root_uid=os.getuid(), root_gid=os.getgid())
    settings = state_db.format_settings(database)
    codec = Codec(bytes.fromhex(settings["hash_key"]), bytes.fromhex(settings["encryption_key"]))
    return WorkerContext(database=database, cache=cache, config=config, pool=build_pool(config), codec=codec,
                         fs_id=settings["fs_id"], chunk_size=int(settings["chunk_size"]))
