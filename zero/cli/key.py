"""`zero key export` and `zero key change-passphrase`: the secret that opens
the data keys stored in the remotes."""

from __future__ import annotations

import getpass
import os
from pathlib import Path

from zero.cli.common import find_cache, open_state
from zero.errors import ZeroError

NEW_PASSPHRASE_ENV = "ZERO_NEW_PASSPHRASE"


def export(args, config) -> int:
    from zero.meta import keyring, keys
    from zero.state import db as state_db

    cache, _ = find_cache(args.location)
    database = open_state(cache, config)
    try:
        settings = state_db.format_settings(database)
    finally:
        database.dispose()
    fs_id = settings["fs_id"]
    envelope = settings.get(keyring.ENVELOPE_META)
    sealed_with = keys.parse_envelope(bytes.fromhex(envelope)).sealed_with if envelope else None
    if sealed_with == keys.PASSPHRASE:
        print(f"The keys of filesystem {fs_id} are sealed with your passphrase; there is no recovery key. "
              "Keep the passphrase safe: with the config's remotes it is all `zero restore` needs.")
        return 0
    path = keyring.recovery_key_path(config, fs_id)
    if not path.exists():
        raise ZeroError(f"no recovery key at {path}: zero-worker makes it when it first stores the keys in "
                        "the remotes; start zero-worker once, or set a passphrase")
    key = keyring.read_recovery_key(path).value
    print(f"Recovery key of filesystem {fs_id}:\n\n    {key}\n\nFor paper:\n\n    {keys.for_paper(key)}\n\n"
          "Keep it apart from this machine: with the config's remotes it is all `zero restore` needs.")
    return 0


def _new_passphrase(args) -> str:
    if args.new_passphrase_file:
        return Path(args.new_passphrase_file).read_text(encoding="utf-8").rstrip("\r\n")
    if os.environ.get(NEW_PASSPHRASE_ENV):
        return os.environ[NEW_PASSPHRASE_ENV]
    first = getpass.getpass("New passphrase: ")
    if first != getpass.getpass("Again: "):
        raise ZeroError("the two passphrases differ; nothing was changed")
    return first


def change_passphrase(args, config) -> int:
    from zero.meta import keyring, keys
    from zero.state import db as state_db
    from zero.wiring import build_remotes

    cache, _ = find_cache(args.location)
    passphrase = _new_passphrase(args)
    if len(passphrase) < 8:
        raise ZeroError("the new passphrase is shorter than 8 characters; choose a longer one")
    database = open_state(cache, config)
    try:
        settings = state_db.format_settings(database)
        fs_id = settings["fs_id"]
        envelope = keys.seal_keys(keyring.data_keys(settings), passphrase, keys.PASSPHRASE, fs_id)
        with database.write() as connection:
            state_db.set_meta(connection, keyring.ENVELOPE_META, envelope.hex())
        stored = keyring.publish(database, build_remotes(config), fs_id, envelope, force=True)
    finally:
        database.dispose()
    recovery = keyring.recovery_key_path(config, fs_id)
    if recovery.exists():
        recovery.unlink()
        print(f"Removed the recovery key {recovery}: it no longer opens the keys.")
    print(f"The keys are now sealed with the new passphrase on: {', '.join(stored) or 'no remote yet'}. "
          "No data was re-encrypted. Put the new passphrase where zero reads it (passphrase or passphraseFile "
          "in the config, or $ZERO_PASSPHRASE).")
    return 0
