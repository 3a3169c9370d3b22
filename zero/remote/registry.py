"""config.yml's ``type:`` -> the Remote class, and a remote's options checked against that class.

Each kind of remote declares its options on its class (``Remote.options``);
this module is the one place that knows which kinds exist, so no kind is
registered twice. zero/config.py only checks what every remote has (a
mapping, a ``type``, a unique ``name``); the wiring asks this module to
validate the rest and to build the remotes.

Secrets need not sit in config.yml: for every option declared secret,
``<key>Env: VARIABLE`` reads it from the environment and ``<key>File: /path``
from a file (its trailing newline dropped), as ``applicationKeyEnv`` or
``secretAccessKeyFile``.
"""

from __future__ import annotations

import importlib
import logging
import os
import stat
from dataclasses import dataclass
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from zero.errors import ConfigError, did_you_mean
from zero.remote.base import Option, Remote
from zero.units import parse_size

log = logging.getLogger(__name__)

# kind -> "module:Class". Imported on first use, so a config without S3 remotes
# never loads boto3, and zero-fuse never loads any SDK.
KINDS: dict[str, str] = {
    "local": "zero.remote.local:LocalRemote",
    "s3": "zero.remote.s3:S3Remote",
    "b2": "zero.remote.b2:B2Remote",
    "rclone": "zero.remote.rclone:RcloneRemote",
}
def _positive_number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{key}: expected a number above zero, got {value!r}")
    return float(value)


def _size(key: str, value: Any) -> int:
    size = parse_size(key, value)
    if size <= 0:
        raise ConfigError(f"{key}: must be larger than zero (got {value!r})")
    return size


# Keys every remote takes, whatever its kind: how the pool uses it, not how to reach it.
POOL_OPTIONS = (
    Option("weight", "weight", parse=_positive_number,
           help="this remote's share of new objects against the others' (default 1)"),
    Option("quota", "quota_bytes", parse=_size,
           help="the most zero stores there, e.g. 10GiB; new objects go where the most quota is free"),
    Option("bwlimit", "bwlimit_bytes_per_s", parse=_size,
           help="bandwidth limit per direction, bytes per second, e.g. 10MiB (as rclone's --bwlimit)"),
)


@dataclass(frozen=True)
class Placement:
    """How the pool uses one remote (the POOL_OPTIONS of its config entry)."""

    weight: float = 1.0
    quota_bytes: int | None = None
    bwlimit_bytes_per_s: int | None = None


ENV_SUFFIX = "Env"
FILE_SUFFIX = "File"
GENERIC_KEYS = ("name", "type")


class Spec(Protocol):
    """What the registry reads of zero.config.RemoteSpec (config is a sibling; no import)."""

    name: str
    kind: str
    options: dict[str, Any]
    where: str


def key_path(where: str, key: str) -> str:
    """``remotes[1].bucket``, or just ``applicationKey`` for the original Zero's top-level keys."""
    return f"{where}.{key}" if where else key


def remote_class(kind: str, where: str = "") -> type[Remote]:
    try:
        target = KINDS[kind]
    except KeyError:
        raise ConfigError(f"{key_path(where, 'type')}: unknown remote type {kind!r}{did_you_mean(str(kind), KINDS)}; "
                          f"this version supports: {', '.join(sorted(KINDS))}") from None
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def arguments(spec: Spec) -> dict[str, Any]:
    """The constructor's keyword arguments for ``spec``, every key checked and
    every secret resolved; ConfigError names the exact key otherwise."""
    cls = remote_class(spec.kind, spec.where)
    a_kind = f"{'an' if cls.kind[0] in 'aeiosx' else 'a'} {cls.kind} remote"
    by_key = _accepted_keys(cls.options + POOL_OPTIONS)
    given: dict[str, tuple[str, Any]] = {}  # option name -> (the key used, raw value)
    for key, raw in spec.options.items():
        if key not in by_key:
            raise ConfigError(f"{key_path(spec.where, str(key))}: unknown key for {a_kind}"
                              f"{did_you_mean(str(key), list(by_key) + list(GENERIC_KEYS))}")
        option = by_key[key]
        if option.name in given:
            raise ConfigError(f"{key_path(spec.where, key)}: {given[option.name][0]} already gives "
                              f"{option.name}; keep one of the two")
        given[option.name] = (key, raw)
    values: dict[str, Any] = {}
    for option in cls.options:
        if option.name not in given:
            if option.required:
                raise ConfigError(f"{key_path(spec.where, option.name)}: {a_kind} needs this key ({option.help})")
            continue
        key, raw = given[option.name]
        values[option.name] = option.parse(key_path(spec.where, option.name),
                                           _resolve(option, key, raw, key_path(spec.where, key)))
    cls.check_options(values, spec.where)
    by_name = {option.name: option for option in cls.options}
    return {by_name[name].argument: value for name, value in values.items()}


def placement(spec: Spec) -> Placement:
    """The pool's settings for ``spec`` (weight, quota, bwlimit); checked by arguments()."""
    return Placement(**{option.argument: option.parse(key_path(spec.where, option.name), spec.options[option.name])
                        for option in POOL_OPTIONS if option.name in spec.options})


def build(spec: Spec) -> Remote:
    """A ready Remote for ``spec`` (no connection is made yet)."""
    return remote_class(spec.kind, spec.where)(spec.name, **arguments(spec))


def check(specs: Iterable[Spec]) -> None:
    """Validate every remote of a config without building any."""
    for spec in specs:
        arguments(spec)
        placement(spec)


def warn_about_exposed_secrets(source: str, specs: Sequence[Spec]) -> bool:
    """Log a warning, as ssh does, when the config file holds a secret in plain
    text and other users may read it. Returns whether it warned."""
    try:
        mode = os.stat(source).st_mode
    except OSError:
        return False  # the embedded default or a text parsed in a test: no file to protect
    if not stat.S_ISREG(mode) or not mode & (stat.S_IRWXG | stat.S_IRWXO):
        return False
    exposed = [key_path(spec.where, option.name) for spec in specs for option in _secret_options(spec)
               if option.name in spec.options]
    if not exposed:
        return False
    log.warning("%s holds %s in plain text and other users can read the file; run `chmod 600 %s`, "
                "or give the secret as %s%s / %s%s (an environment variable or a file of its own)",
                source, ", ".join(exposed), source, exposed[0].rpartition(".")[2], ENV_SUFFIX,
                exposed[0].rpartition(".")[2], FILE_SUFFIX)
    return True


def _secret_options(spec: Spec) -> list[Option]:
    if spec.kind not in KINDS:
        return []
    return [option for option in remote_class(spec.kind).options if option.secret]


def _accepted_keys(options: Sequence[Option]) -> dict[str, Option]:
    keys: dict[str, Option] = {}
    for option in options:
        for name in (option.name, *option.aliases):
            keys[name] = option
            if option.secret:
                keys[name + ENV_SUFFIX] = option
                keys[name + FILE_SUFFIX] = option
    return keys


def _resolve(option: Option, key: str, raw: Any, where: str) -> Any:
    """The value of a key, reading ``…Env`` and ``…File`` indirections."""
    if not option.secret or not key.endswith((ENV_SUFFIX, FILE_SUFFIX)) or key in (option.name, *option.aliases):
        return raw
    if not isinstance(raw, str) or not raw:
        raise ConfigError(f"{where}: expected the name of {'an environment variable' if key.endswith(ENV_SUFFIX) else 'a file'}, "
                          f"got {raw!r}")
    if key.endswith(ENV_SUFFIX):
        value = os.environ.get(raw)
        if not value:
            raise ConfigError(f"{where}: the environment variable {raw} is {'empty' if value == '' else 'not set'}; "
                              f"export {raw}=... before starting zero, or give {option.name} another way")
        return value
    path = os.path.expanduser(raw)
    try:
        with open(path, encoding="utf-8") as file:
            value = file.read().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or "not UTF-8 text"
        raise ConfigError(f"{where}: cannot read {path} ({reason}); check the path and its permissions") from None
    if not value:
        raise ConfigError(f"{where}: {path} is empty; put the {option.name} in it")
    return value
