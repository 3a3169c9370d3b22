"""config.yml -> a validated Config. Every error names the key and the fix.

Where the file is looked for, in order: ``--config PATH``, ``$ZERO_CONFIG``,
``~/.config/zero/config.yml``. With none of them present zero runs on an
embedded default: a local folder standing in for the cloud.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zero.errors import ConfigError, did_you_mean
from zero.units import parse_duration, parse_size

log = logging.getLogger(__name__)

GIB = 1024**3
MIB = 1024**2

DEFAULT_CONFIG_PATH = Path("~/.config/zero/config.yml")
DEFAULT_REMOTE_FOLDER = Path("~/.local/share/zero/remote")

def _number(key: str, value: Any, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{key}: must be at least {minimum} (got {value})")
    return float(value)


def _integer(key: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: expected a whole number, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{key}: must be at least {minimum} (got {value})")
    return value


def _boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected a non-empty text value, got {value!r}")
    return value


@dataclass(frozen=True)
class RemoteSpec:
    """One entry of ``remotes:``. ``options`` holds the kind's own keys, checked
    against the kind's class by zero.remote.registry, not here; ``where`` is
    how errors name the entry (``remotes[1]``, or "" for the original Zero's
    top-level B2 keys)."""

    name: str
    kind: str
    options: dict[str, Any]
    where: str = ""


@dataclass(frozen=True)
class Config:
    source: str  # the file it came from, or "embedded default"
    target_disk_usage_bytes: int = 10 * GIB
    chunk_size_bytes: int = 4 * MIB
    sqlite_file_location: str | None = None
    remotes: tuple[RemoteSpec, ...] = ()
    replicas: int = 1
    upload_delay_s: float = 5.0
    fault_in_timeout_s: float = 60.0
    fsync_waits_for_upload: bool = True
    capacity_bytes: int = 1024**5  # what statfs reports as the disk's size: "infinite"
    low_watermark: float = 0.9
    prefetch_chunks: int = 4
    gc_grace_period_s: float = 3600.0
    min_free_disk_bytes: int = 256 * MIB
    log_level: str = "INFO"
    passphrase: str | None = None            # seals the data keys in the remotes (or passphraseFile, $ZERO_PASSPHRASE)
    passphrase_file: str | None = None
    metadata_backup_interval_s: float = 60.0
    writer_timeout_s: float = 120.0  # a writer whose heartbeat is older is presumed dead (--force may take over)
    snapshot_retention: tuple[tuple[str, int], ...] = (("hourly", 48), ("daily", 30))
    metrics_address: str = "127.0.0.1:9567"  # zero-worker's Prometheus endpoint; "" for none
    scrub_rate_bytes_per_s: int = 0  # the background scrub's read rate; 0: off (reading back costs egress)
    memory_inodes: int = 50_000  # idle files and folders zero-fuse keeps in memory, and twice as many listed names
    extra: dict[str, Any] = field(default_factory=dict)

    def database_path(self, cache_dir: Path) -> Path:
        if self.sqlite_file_location:
            return Path(self.sqlite_file_location).expanduser()
        return Path(cache_dir) / "state.sqlite3"


# key -> (Config field, parser). The original Zero's keys come first.
def _parse_target(key: str, value: Any) -> int:
    size = parse_size(key, value, bare_number_unit=GIB)
    if size <= 0:
        raise ConfigError(f"{key}: must be larger than zero (got {value!r}); for example targetDiskUsage: 20GB")
    return size


def _parse_chunk_size(key: str, value: Any) -> int:
    size = parse_size(key, value)
    if size < 64 * 1024 or size > 256 * MIB or size & (size - 1):
        raise ConfigError(f"{key}: must be a power of two between 64KiB and 256MiB (got {value!r}); the default is 4MiB")
    return size


def _parse_watermark(key: str, value: Any) -> float:
    number = _number(key, value)
    if not 0.1 <= number <= 1.0:
        raise ConfigError(f"{key}: must be a fraction between 0.1 and 1.0 (got {value!r}); the default is 0.9")
    return number


def _parse_log_level(key: str, value: Any) -> str:
    level = _string(key, value).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"{key}: must be one of debug, info, warning, error (got {value!r})")
    return level


def _parse_address(key: str, value: Any) -> str:
    if value == "":
        return ""
    host, _, port = str(value).rpartition(":")
    if not isinstance(value, str) or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{key}: expected host:port such as 127.0.0.1:9567, or \"\" for none (got {value!r})")
    return value


# The original Zero's B2 keys, at the top level: together they become one
# remote named "b2". The secret may come from a variable or a file, as in any
# remote (see zero.remote.registry).
LEGACY_B2_KEYS = ("accountId", "applicationKey", "applicationKeyEnv", "applicationKeyFile", "bucketId")
LEGACY_B2_NAME = "b2"

_KEYS: dict[str, tuple[str, Any]] = {
    "sqliteFileLocation": ("sqlite_file_location", _string),
    "targetDiskUsage": ("target_disk_usage_bytes", _parse_target),
    "chunkSize": ("chunk_size_bytes", _parse_chunk_size),
    "remotes": ("remotes", None),  # parsed by _parse_remotes
    "replicas": ("replicas", lambda k, v: _integer(k, v, minimum=1)),
    "uploadDelay": ("upload_delay_s", parse_duration),
    "faultInTimeout": ("fault_in_timeout_s", lambda k, v: parse_duration(k, v, minimum=0.1)),
    "fsyncWaitsForUpload": ("fsync_waits_for_upload", _boolean),
    "capacity": ("capacity_bytes", lambda k, v: parse_size(k, v, bare_number_unit=GIB)),
    "lowWatermark": ("low_watermark", _parse_watermark),
    "prefetchChunks": ("prefetch_chunks", _integer),
    "gcGracePeriod": ("gc_grace_period_s", parse_duration),
    "minFreeDisk": ("min_free_disk_bytes", lambda k, v: parse_size(k, v, bare_number_unit=GIB)),
    "logLevel": ("log_level", _parse_log_level),
    "passphrase": ("passphrase", _string),
    "passphraseFile": ("passphrase_file", _string),
    "metadataBackupInterval": ("metadata_backup_interval_s", lambda k, v: parse_duration(k, v, minimum=1.0)),
    "writerTimeout": ("writer_timeout_s", lambda k, v: parse_duration(k, v, minimum=2.0)),
    "snapshotRetention": ("snapshot_retention", None),  # parsed by _parse_retention
    "metricsAddress": ("metrics_address", _parse_address),
    "scrubRate": ("scrub_rate_bytes_per_s", parse_size),
    "memoryInodes": ("memory_inodes", lambda k, v: _integer(k, v, minimum=1)),
}

RETENTION_PERIODS = ("hourly", "daily", "weekly", "monthly")


def _parse_retention(key: str, value: Any) -> tuple[tuple[str, int], ...]:
    """{hourly: 48, daily: 30}: keep the newest snapshot of each of the last 48 hours and 30 days."""
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"{key}: expected a mapping of periods to counts, for example\n"
                          f"{key}:\n  hourly: 48\n  daily: 30")
    rules = []
    for period, count in value.items():
        if period not in RETENTION_PERIODS:
            raise ConfigError(f"{key}.{period}: unknown period{did_you_mean(str(period), RETENTION_PERIODS)}; "
                              f"use {', '.join(RETENTION_PERIODS)}")
        rules.append((period, _integer(f"{key}.{period}", count, minimum=0)))
    return tuple(rules)


def _parse_remotes(value: Any) -> tuple[RemoteSpec, ...]:
    """The generic part of each entry: a mapping, a ``type``, a unique ``name``.
    Each kind's own keys are the registry's to check."""
    if not isinstance(value, list) or not value:
        raise ConfigError("remotes: expected a list of remotes, for example\n"
                          "remotes:\n  - name: home\n    type: local\n    path: /srv/zero-remote")
    specs = []
    seen = set()
    for position, entry in enumerate(value):
        where = f"remotes[{position}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a mapping with name, type and the type's keys, got {entry!r}")
        kind = entry.get("type")
        if "type" not in entry:
            for key in entry:
                if did_you_mean(str(key), ["type"]):
                    raise ConfigError(f"{where}.{key}: unknown key{did_you_mean(str(key), ['type'])}")
        if not isinstance(kind, str) or not kind:
            raise ConfigError(f"{where}.type: each remote needs a type, such as local, s3 or b2 (got {kind!r})")
        name = entry.get("name", f"{kind}{position}")
        _string(f"{where}.name", name)
        if name in seen:
            raise ConfigError(f"{where}.name: the name {name!r} is used twice; give each remote its own name")
        seen.add(name)
        options = {k: v for k, v in entry.items() if k not in ("type", "name")}
        specs.append(RemoteSpec(name=name, kind=kind, options=options, where=where))
    return tuple(specs)


def _legacy_b2_remote(raw: dict[str, Any], source: str) -> RemoteSpec | None:
    """The original Zero's accountId/applicationKey/bucketId as one b2 remote."""
    options = {key: raw[key] for key in LEGACY_B2_KEYS if key in raw}
    if not options:
        return None
    for key, value in options.items():
        if value is None:
            raise ConfigError(f"{source}: {key} has no value; give it one or remove the line")
    return RemoteSpec(name=LEGACY_B2_NAME, kind="b2", options=options, where="")


def default_remote(base: Path | None = None) -> RemoteSpec:
    folder = (base or DEFAULT_REMOTE_FOLDER).expanduser()
    return RemoteSpec(name="local-default", kind="local", options={"path": str(folder)})


def parse(text: str, source: str) -> Config:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{source}: the YAML does not parse{where}: {problem}; fix that line") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of keys like 'targetDiskUsage: 20GB', got {type(raw).__name__}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in LEGACY_B2_KEYS:
            continue  # gathered into one remote below
        if key not in _KEYS:
            known = list(_KEYS) + list(LEGACY_B2_KEYS)
            raise ConfigError(f"{source}: unknown key {key!r}{did_you_mean(str(key), known)}")
        field_name, parser = _KEYS[key]
        if key == "remotes":
            values[field_name] = _parse_remotes(value)
        elif key == "snapshotRetention":
            values[field_name] = _parse_retention(key, value)
        else:
            if value is None:
                raise ConfigError(f"{source}: {key} has no value; give it one or remove the line")
            values[field_name] = parser(key, value)
    legacy = _legacy_b2_remote(raw, source)
    if legacy is not None:
        listed = values.get("remotes", ())
        if any(spec.name == legacy.name for spec in listed):
            raise ConfigError(f"{source}: accountId/bucketId make a remote named {legacy.name!r}, and remotes: "
                              f"has another remote of that name; rename that one")
        # The original Zero's bucket comes first: it is where that config's data went.
        values["remotes"] = (legacy, *listed)
    if "remotes" not in values:
        values["remotes"] = (default_remote(),)
    if "passphrase" in values and "passphrase_file" in values:
        raise ConfigError(f"{source}: passphrase and passphraseFile are both set; keep one of them")
    config = Config(source=source, **values)
    if config.replicas > len(config.remotes):
        raise ConfigError(
            f"replicas: asks for {config.replicas} copies but only {len(config.remotes)} remote(s) are configured; "
            "lower replicas or add remotes"
        )
    return config


def replace_grace(config: Config, grace_s: float) -> Config:
    return dataclasses.replace(config, gc_grace_period_s=_number("--grace", grace_s))


def find_config_path(explicit: str | None = None) -> Path | None:
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"--config {explicit}: no such file; check the path or leave --config out")
        return path
    env = os.environ.get("ZERO_CONFIG")
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise ConfigError(f"ZERO_CONFIG={env}: no such file; fix the variable or unset it")
        return path
    path = DEFAULT_CONFIG_PATH.expanduser()
    return path if path.exists() else None


def load(explicit: str | None = None) -> Config:
    path = find_config_path(explicit)
    if path is None:
        config = Config(source="embedded default", remotes=(default_remote(),))
        log.info("No config file found (looked at --config, $ZERO_CONFIG and %s); using the embedded default: "
                 "a local folder %s stands in for the cloud", DEFAULT_CONFIG_PATH, config.remotes[0].options["path"])
        return config
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config file ({error.strerror}); check its permissions") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: the config file is not UTF-8 text (byte {error.start}); "
                          "save it as UTF-8") from None
    return parse(text, str(path))
