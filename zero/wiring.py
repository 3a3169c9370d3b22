"""What the processes build from a Config: the remotes, the pool, the worker's context.

The only module that knows every layer: the registry turns each configured
remote into an object, the retry wrapper goes around it, the pool holds them.
Config loading itself stays in zero.config, which knows no remote; ``load``
here adds the checks that need the remote classes.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from zero import config as config_module
from zero.cachedir import CacheDir
from zero.config import Config
from zero.remote import registry
from zero.remote.base import Remote
from zero.remote.pool import RemotePool
from zero.remote.retry import RetryingRemote, RetrySettings


def load_config(explicit: str | None = None) -> Config:
    """zero.config.load, then every remote checked against its class, so a
    wrong key fails at start with its name rather than at the first upload."""
    config = config_module.load(explicit)
    check_remotes(config)
    return config


def check_remotes(config: Config) -> None:
    registry.check(config.remotes)
    registry.warn_about_exposed_secrets(config.source, config.remotes)


def build_remotes(config: Config, retry: RetrySettings = RetrySettings()) -> list[Remote]:
    check_remotes(config)
    return [RetryingRemote(registry.build(spec), retry) for spec in config.remotes]


def build_pool(config: Config, retry: RetrySettings = RetrySettings(),
               wrap: Callable[[Remote], Remote] | None = None) -> RemotePool:
    """``wrap`` goes around each remote, outside the retries (the worker's metrics)."""
    settings = {spec.name: vars(registry.placement(spec)) for spec in config.remotes}
    remotes = build_remotes(config, retry)
    if wrap is not None:
        remotes = [wrap(remote) for remote in remotes]
    return RemotePool(remotes, config.replicas, settings)


def build_context(config: Config, cache: CacheDir, wrap: Callable[[Remote], Remote] | None = None):
    """The worker's context: the state database, the codec from the format's keys, the pool
    (each remote inside ``wrap``, if given)."""
    from zero.remote.codec import Codec
    from zero.state import db as state_db
    from zero.worker.context import WorkerContext

    database = state_db.open_database(config.database_path(cache.root), config.chunk_size_bytes,
                                      root_uid=os.getuid(), root_gid=os.getgid())
    settings = state_db.format_settings(database)
    codec = Codec(bytes.fromhex(settings["hash_key"]), bytes.fromhex(settings["encryption_key"]))
    return WorkerContext(database=database, cache=cache, config=config, pool=build_pool(config, wrap=wrap), codec=codec,
                         fs_id=settings["fs_id"], chunk_size=int(settings["chunk_size"]))
