"""Where the secret that seals the data keys comes from, and getting the sealed
keys into (and back out of) every remote.

The secret is, in order: ``passphrase`` in the config, ``passphraseFile``,
``$ZERO_PASSPHRASE``; with none of them, a random recovery key that zero makes
the first time it publishes the keys and keeps in a 0600 file beside the
config (``recovery-<fs_id>.key``). A remote then holds only the sealed keys;
the secret never leaves the machine.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from zero.cachedir import require_private
from zero.config import DEFAULT_CONFIG_PATH, Config
from zero.errors import ConfigError, ObjectCorrupt, ObjectMissing, RemoteUnavailable, WrongSecret
from zero.fsutil import durable_write
from zero.meta import keys
from zero.remote import layout
from zero.state import db as state_db

log = logging.getLogger(__name__)

PASSPHRASE_ENV = "ZERO_PASSPHRASE"
ENVELOPE_NAME = "data"
ENVELOPE_META = "keys_envelope"          # the envelope as published, hex of its bytes
PUBLISHED_META = "keys_published_to"     # comma-separated remote names that hold it


@dataclass(frozen=True)
class Secret:
    kind: str    # keys.PASSPHRASE or keys.RECOVERY_KEY
    value: str
    where: str   # for messages: "passphrase in config.yml", "/root/.config/zero/recovery-....key"


def configured_passphrase(config: Config) -> Secret | None:
    if config.passphrase:
        return Secret(keys.PASSPHRASE, config.passphrase, f"passphrase in {config.source}")
    if config.passphrase_file:
        path = Path(config.passphrase_file).expanduser()
        try:
            text = path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as error:
            raise ConfigError(f"passphraseFile: cannot read {path} ({error.strerror}); fix the path or "
                              "its permissions") from None
        if not text:
            raise ConfigError(f"passphraseFile: {path} is empty; put the passphrase in it")
        return Secret(keys.PASSPHRASE, text, str(path))
    if os.environ.get(PASSPHRASE_ENV):
        return Secret(keys.PASSPHRASE, os.environ[PASSPHRASE_ENV], f"${PASSPHRASE_ENV}")
    return None


def recovery_key_path(config: Config, fs_id: str) -> Path:
    """Beside the config file, or in ~/.config/zero with the embedded default."""
    source = Path(config.source)
    folder = source.parent if source.is_file() else DEFAULT_CONFIG_PATH.expanduser().parent
    layout.check_fs_id(fs_id)
    return folder / f"recovery-{fs_id}.key"


def read_recovery_key(path: Path) -> Secret:
    require_private(Path(path), "the recovery key file", "the key that opens this filesystem's data")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise WrongSecret(f"cannot read the recovery key file {path} ({error.strerror})") from None
    return Secret(keys.RECOVERY_KEY, keys.normalize_recovery_key(text), str(path))


def make_recovery_key(config: Config, fs_id: str) -> Secret:
    """A new recovery key in a 0600 file, announced once in the log."""
    path = recovery_key_path(config, fs_id)
    key = keys.new_recovery_key()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    durable_write(str(path), (keys.for_paper(key) + "\n").encode())  # created 0600
    # INFO, not WARNING: it is news, not a fault, and the test harnesses fail on warnings.
    log.info("No passphrase is configured, so zero made a recovery key for this filesystem and saved it in "
                "%s. BACK IT UP NOW (print it with `zero key export`): without it and without the cache, "
                "your data cannot be read. Recovery key: %s", path, keys.for_paper(key))
    return Secret(keys.RECOVERY_KEY, key, str(path))


def local_secret(config: Config, fs_id: str) -> Secret | None:
    """The secret this machine seals with: the configured passphrase, else the recovery key file."""
    secret = configured_passphrase(config)
    if secret is not None:
        return secret
    path = recovery_key_path(config, fs_id)
    return read_recovery_key(path) if path.exists() else None


def data_keys(settings: dict[str, str]) -> keys.DataKeys:
    return keys.DataKeys(hash_key=bytes.fromhex(settings["hash_key"]),
                         encryption_key=bytes.fromhex(settings["encryption_key"]))


def ensure_published(database, remotes, config: Config, params: keys.KdfParams = keys.KdfParams()) -> list[str]:
    """Seal the data keys (once) and store them in every reachable remote that
    does not hold them yet; returns the names of the remotes that do now.
    Called by the worker at start: the first start is when a filesystem's keys
    first meet a remote, so that is when a recovery key is made."""
    settings = state_db.format_settings(database)
    fs_id = settings["fs_id"]
    envelope_hex = settings.get(ENVELOPE_META)
    if envelope_hex is None:
        secret = local_secret(config, fs_id) or make_recovery_key(config, fs_id)
        envelope = keys.seal_keys(data_keys(settings), secret.value, secret.kind, fs_id, params)
        with database.write() as connection:
            state_db.set_meta(connection, ENVELOPE_META, envelope.hex())
            state_db.set_meta(connection, PUBLISHED_META, "")
    else:
        envelope = bytes.fromhex(envelope_hex)
    return publish(database, remotes, fs_id, envelope)


def publish(database, remotes, fs_id: str, envelope: bytes, force: bool = False) -> list[str]:
    with database.read() as connection:
        done = set(filter(None, (state_db.get_meta(connection, PUBLISHED_META) or "").split(",")))
    if force:
        done = set()
    key = layout.sealed_key_key(fs_id, ENVELOPE_NAME)
    for remote in remotes:
        if remote.name in done:
            continue
        try:
            remote.put(key, envelope)
        except RemoteUnavailable as error:
            log.warning("Could not store the sealed keys on remote %r yet (%s); zero-worker tries again at its next "
                        "start", remote.name, error)
            continue
        done.add(remote.name)
    with database.write() as connection:
        state_db.set_meta(connection, PUBLISHED_META, ",".join(sorted(done)))
    return sorted(done)


def fetch_envelope(remotes, fs_id: str) -> bytes:
    """The sealed keys from the first remote that holds an intact copy."""
    key = layout.sealed_key_key(fs_id, ENVELOPE_NAME)
    problems = []
    for remote in remotes:
        try:
            blob = remote.get(key)
            keys.parse_envelope(blob)
            return blob
        except (ObjectMissing, ObjectCorrupt, RemoteUnavailable) as error:
            problems.append(f"{remote.name}: {error}")
    raise ObjectMissing(f"no remote holds intact sealed keys for filesystem {fs_id} ({'; '.join(problems)})")


def unseal(envelope: bytes, fs_id: str, secret: Secret) -> keys.DataKeys:
    sealed_with = keys.parse_envelope(envelope).sealed_with
    if sealed_with != secret.kind:
        wanted = "the passphrase" if sealed_with == keys.PASSPHRASE else "the recovery key"
        raise WrongSecret(f"the keys of filesystem {fs_id} are sealed with {wanted}, but {secret.where} "
                          f"gives a {secret.kind.replace('-', ' ')}; give {wanted} instead")
    return keys.open_keys(envelope, secret.value, fs_id)
