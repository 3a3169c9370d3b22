"""The sealed-keys format: round trips, a golden vector, every byte tampered,
and where the secret comes from (passphrase, file, variable, recovery key)."""

from __future__ import annotations

import logging
import os
import stat

import pytest

from zero.config import Config, RemoteSpec, parse
from zero.errors import ConfigError, MountError, ObjectCorrupt, WrongSecret
from zero.meta import keyring, keys
from zero.remote.local import LocalRemote
from zero.state import db as state_db

DATA_KEYS = keys.DataKeys(bytes(range(32)), bytes(range(32, 64)))
CHEAP = keys.KdfParams(time_cost=1, memory_kib=64, parallelism=1)
FS_ID = "0123456789abcdef"
# Sealed once with the values below and pasted here. If it stops opening, the
# format changed and every filesystem's stored keys would be lost: bump VERSION
# and keep reading this one instead.
GOLDEN = (
    b'{"ciphertext":"EQx90LWwLNLZbDkfGH8TGd5TMXNbTu4oz23jk3j3BhTuM4U9LFPJviZQLAsNsPHYLy/mmCx6mjiQjrGaqmEIKWf5uPdwt8LT8'
    b'd3ukMdu6Sv2TqLn37krYiqw9moD4o3Prz/kC1XJ2cTQYvHyy5o9AB6qA9pr97nDDjCnyLTsXY5+JkSqSsyft1AZp0+2Ei6f9CDr1axRowVgq2Vw'
    b's4CLNBqvxfCObAZkJnlWRQaI3UApBVM=","fs_id":"0123456789abcdef","kdf":{"memory_kib":64,"name":"argon2id",'
    b'"parallelism":1,"time_cost":1},"nonce":"ZGVmZ2hpamtsbW5v","salt":"AAECAwQFBgcICQoLDA0ODw==",'
    b'"sealed_with":"passphrase","version":1}')


def test_golden_vector_opens_and_reseals_identically():
    assert keys.open_keys(GOLDEN, "correct horse", FS_ID) == DATA_KEYS
    assert keys.seal_keys(DATA_KEYS, "correct horse", keys.PASSPHRASE, FS_ID, CHEAP,
                          salt=bytes(range(16)), nonce=bytes(range(100, 112))) == GOLDEN


def test_round_trip_with_fresh_salt_and_nonce():
    first = keys.seal_keys(DATA_KEYS, "pw", keys.PASSPHRASE, FS_ID, CHEAP)
    second = keys.seal_keys(DATA_KEYS, "pw", keys.PASSPHRASE, FS_ID, CHEAP)
    assert first != second
    assert keys.open_keys(first, "pw") == keys.open_keys(second, "pw") == DATA_KEYS


def test_the_envelope_does_not_contain_the_keys():
    assert DATA_KEYS.hash_key.hex().encode() not in GOLDEN
    assert DATA_KEYS.encryption_key.hex().encode() not in GOLDEN


def test_wrong_passphrase_is_refused():
    with pytest.raises(WrongSecret, match="passphrase does not open"):
        keys.open_keys(GOLDEN, "correct horsE")


def test_another_filesystem_is_refused():
    with pytest.raises(ObjectCorrupt, match="belong to filesystem"):
        keys.open_keys(GOLDEN, "correct horse", fs_id="another")


@pytest.mark.parametrize("position", range(len(GOLDEN)))
def test_every_changed_byte_is_refused(position):
    damaged = bytearray(GOLDEN)
    damaged[position] ^= 0x01
    with pytest.raises((ObjectCorrupt, WrongSecret)):
        keys.open_keys(bytes(damaged), "correct horse")


@pytest.mark.parametrize("length", [0, 1, len(GOLDEN) // 2, len(GOLDEN) - 1])
def test_truncated_envelope_is_refused(length):
    with pytest.raises(ObjectCorrupt):
        keys.open_keys(GOLDEN[:length], "correct horse")


def test_weakened_kdf_parameters_fail_authentication():
    weakened = GOLDEN.replace(b'"time_cost":1', b'"time_cost":2')
    with pytest.raises(WrongSecret):
        keys.open_keys(weakened, "correct horse")


def test_absurd_kdf_parameters_are_refused_before_deriving():
    hostile = GOLDEN.replace(b'"memory_kib":64', b'"memory_kib":99999999')
    with pytest.raises(ObjectCorrupt, match="out of bounds"):
        keys.open_keys(hostile, "correct horse")


def test_recovery_key_for_paper_round_trips():
    key = keys.new_recovery_key()
    paper = keys.for_paper(key)
    assert len(key) == 32 and paper.count("-") == 7
    assert keys.normalize_recovery_key(paper.lower().replace("-", " ")) == key
    sealed = keys.seal_keys(DATA_KEYS, key, keys.RECOVERY_KEY, FS_ID, CHEAP)
    assert keys.open_keys(sealed, keys.normalize_recovery_key(paper)) == DATA_KEYS
    with pytest.raises(WrongSecret, match="recovery key does not open"):
        keys.open_keys(sealed, keys.new_recovery_key())


@pytest.mark.parametrize("text", ["", "ABCD", "0" * 32, "ABCD-EFGH-IJKL-MNOP-QRST-UVWX-YZ23-456!"])
def test_not_a_recovery_key(text):
    with pytest.raises(WrongSecret, match="not a zero recovery key"):
        keys.normalize_recovery_key(text)


# --- where the secret comes from -------------------------------------------------------------


def test_passphrase_sources_in_order(tmp_path, monkeypatch):
    monkeypatch.setenv("ZERO_PASSPHRASE", "from env")
    assert keyring.configured_passphrase(Config(source="t")).value == "from env"
    secret_file = tmp_path / "pass"
    secret_file.write_text("from file\n")
    assert keyring.configured_passphrase(Config(source="t", passphrase_file=str(secret_file))).value == "from file"
    assert keyring.configured_passphrase(Config(source="t", passphrase="inline")).value == "inline"
    monkeypatch.delenv("ZERO_PASSPHRASE")
    assert keyring.configured_passphrase(Config(source="t")) is None


def test_config_keys_and_their_errors(tmp_path):
    config = parse("passphraseFile: /x\nmetadataBackupInterval: 5\nsnapshotRetention: {hourly: 2, daily: 3}\n", "c")
    assert config.passphrase_file == "/x" and config.metadata_backup_interval_s == 5.0
    assert config.snapshot_retention == (("hourly", 2), ("daily", 3))
    with pytest.raises(ConfigError, match="keep one of them"):
        parse("passphrase: a\npassphraseFile: /x\n", "c")
    with pytest.raises(ConfigError, match="did you mean 'hourly'"):
        parse("snapshotRetention: {hourli: 2}\n", "c")
    with pytest.raises(ConfigError, match="metadataBackupInterval: must be at least 1"):
        parse("metadataBackupInterval: 0\n", "c")
    with pytest.raises(ConfigError, match="passphraseFile: cannot read"):
        keyring.configured_passphrase(Config(source="t", passphrase_file=str(tmp_path / "missing")))


@pytest.fixture
def state(tmp_path):
    database = state_db.open_database(tmp_path / "state.sqlite3")
    yield database
    database.dispose()


def test_without_a_passphrase_a_recovery_key_is_made_once_and_published(tmp_path, state, monkeypatch, caplog):
    monkeypatch.delenv("ZERO_PASSPHRASE", raising=False)
    config_path = tmp_path / "config.yml"
    config_path.write_text("{}\n")
    config = Config(source=str(config_path), remotes=(RemoteSpec("a", "local", {}),))
    remotes = [LocalRemote("a", tmp_path / "ra"), LocalRemote("b", tmp_path / "rb")]
    for remote in remotes:
        remote.prepare()  # as the worker's first use does
    with caplog.at_level(logging.INFO):
        assert keyring.ensure_published(state, remotes, config, CHEAP) == ["a", "b"]
    fs_id = state_db.format_settings(state)["fs_id"]
    path = keyring.recovery_key_path(config, fs_id)
    assert path.parent == tmp_path and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert "without it and without the cache, your data cannot be read" in caplog.text
    secret = keyring.read_recovery_key(path)
    assert secret.value in caplog.text.replace("-", "")
    os.chmod(path, 0o644)  # as a careless copy would leave it: refused, with the fix named
    with pytest.raises(MountError, match=f"other users.*chmod 600 {path}"):
        keyring.read_recovery_key(path)
    os.chmod(path, 0o600)
    # Published once: a second start neither makes a new key nor says it again.
    caplog.clear()
    assert keyring.ensure_published(state, remotes, config, CHEAP) == ["a", "b"]
    assert "recovery key" not in caplog.text
    envelope = keyring.fetch_envelope(remotes[1:], fs_id)
    settings = state_db.format_settings(state)
    assert keyring.unseal(envelope, fs_id, secret) == keyring.data_keys(settings)
    with pytest.raises(WrongSecret, match="sealed with the recovery key"):
        keyring.unseal(envelope, fs_id, keyring.Secret(keys.PASSPHRASE, "guess", "test"))


def test_with_a_passphrase_no_recovery_key_is_made(tmp_path, state):
    config = Config(source=str(tmp_path / "none.yml"), passphrase="hunter2 hunter2")
    remote = LocalRemote("a", tmp_path / "ra")
    remote.prepare()
    keyring.ensure_published(state, [remote], config, CHEAP)
    fs_id = state_db.format_settings(state)["fs_id"]
    assert not list(tmp_path.glob("recovery-*.key"))
    envelope = keyring.fetch_envelope([remote], fs_id)
    assert keys.parse_envelope(envelope).sealed_with == keys.PASSPHRASE
    assert keyring.unseal(envelope, fs_id, keyring.configured_passphrase(config)) == \
        keyring.data_keys(state_db.format_settings(state))
