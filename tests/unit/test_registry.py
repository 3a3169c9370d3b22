"""Remote options checked against each class: every error names the exact key; secrets from env or file."""

import logging
import os

import pytest

from zero.config import RemoteSpec, parse
from zero.errors import ConfigError
from zero.remote import registry
from zero.wiring import check_remotes

S3 = "remotes:\n  - name: a\n    type: s3\n    bucket: zero-data\n"


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        check_remotes(parse(text, "test.yml"))
    return str(caught.value)


def arguments(text: str, position: int = 0) -> dict:
    return registry.arguments(parse(text, "test.yml").remotes[position])


def test_every_kind_is_registered_once_with_its_class():
    for kind in registry.KINDS:
        assert registry.remote_class(kind).kind == kind


def test_unknown_type_is_named_with_the_known_ones():
    message = error_of("remotes:\n  - {name: a, type: local, path: /a}\n  - {name: b, type: ftp, path: /b}\n")
    assert message.startswith("remotes[1].type:")
    assert "'ftp'" in message and "b2, local, rclone, s3" in message


def test_missing_required_key_is_named():
    message = error_of("remotes:\n  - {name: a, type: local, path: /a}\n  - {name: b, type: s3}\n")
    assert message.startswith("remotes[1].bucket: an s3 remote needs this key")


def test_unknown_key_is_named_with_a_suggestion():
    message = error_of("remotes:\n  - {name: a, type: s3, bukcet: x}\n")
    assert message.startswith("remotes[0].bukcet: unknown key for an s3 remote; did you mean 'bucket'?")
    assert "did you mean 'name'?" in error_of("remotes:\n  - {nmae: a, type: local, path: /a}\n")


@pytest.mark.parametrize("text, key", [
    ("remotes:\n  - {name: a, type: local, path: 7}\n", "remotes[0].path"),
    (S3 + "    pathStyle: yes please\n", "remotes[0].pathStyle"),
    (S3 + "    endpoint: minio.local:9000\n", "remotes[0].endpoint"),
    (S3 + "    prefix: /abs\n", "remotes[0].prefix"),
    (S3 + "    accessKeyId: AKIA\n", "remotes[0].secretAccessKey"),
    ("accountId: 42\nbucketId: b\napplicationKey: k\n", "accountId"),
    ("accountId: a\napplicationKey: k\n", "bucketId"),
    ("remotes:\n  - {name: b, type: b2, accountId: a, applicationKey: k, bucket: x, bucketId: y}\n",
     "remotes[0].bucketId"),
])
def test_bad_values_name_their_key(text, key):
    assert error_of(text).startswith(f"{key}:")


def test_s3_options_become_arguments():
    assert arguments(S3 + "    endpoint: http://127.0.0.1:9000\n    pathStyle: true\n    prefix: zero\n"
                     "    accessKeyId: AKIA\n    secretAccessKey: s3cret\n") == {
        "bucket": "zero-data", "endpoint": "http://127.0.0.1:9000", "path_style": True, "prefix": "zero/",
        "access_key_id": "AKIA", "secret_access_key": "s3cret"}


def test_original_zero_keys_make_one_b2_remote():
    config = parse("accountId: abc123\napplicationKey: K001secret\nbucketId: bucket-9\n", "test.yml")
    assert [(spec.name, spec.kind) for spec in config.remotes] == [("b2", "b2")]
    assert registry.arguments(config.remotes[0]) == {
        "account_id": "abc123", "application_key": "K001secret", "bucket_id": "bucket-9"}


def test_application_key_id_is_an_alias_of_account_id():
    text = "remotes:\n  - {name: b, type: b2, applicationKeyId: kid, applicationKey: k, bucket: x}\n"
    assert arguments(text)["account_id"] == "kid"
    both = "remotes:\n  - {name: b, type: b2, accountId: a, applicationKeyId: kid, applicationKey: k, bucket: x}\n"
    assert "keep one of the two" in error_of(both)


def test_secret_from_the_environment(monkeypatch):
    monkeypatch.setenv("ZERO_TEST_SECRET", "from-env")
    text = S3 + "    accessKeyId: AKIA\n    secretAccessKeyEnv: ZERO_TEST_SECRET\n"
    assert arguments(text)["secret_access_key"] == "from-env"
    monkeypatch.delenv("ZERO_TEST_SECRET")
    message = error_of(text)
    assert message.startswith("remotes[0].secretAccessKeyEnv:")
    assert "ZERO_TEST_SECRET is not set" in message


def test_secret_from_a_file(tmp_path):
    secret = tmp_path / "b2.key"
    secret.write_text("K001fromfile\n")
    text = f"accountId: a\nbucketId: b\napplicationKeyFile: {secret}\n"
    assert registry.arguments(parse(text, "t").remotes[0])["application_key"] == "K001fromfile"
    secret.unlink()
    message = error_of(text)
    assert message.startswith("applicationKeyFile:")
    assert str(secret) in message and "No such file" in message


def test_a_secret_given_twice_is_refused(monkeypatch):
    monkeypatch.setenv("ZERO_TEST_SECRET", "x")
    message = error_of("accountId: a\nbucketId: b\napplicationKey: k\napplicationKeyEnv: ZERO_TEST_SECRET\n")
    assert "keep one of the two" in message


def test_only_secret_options_take_env_or_file():
    assert error_of(S3 + "    bucketEnv: X\n").startswith("remotes[0].bucketEnv: unknown key")


def write_config(tmp_path, text, mode):
    path = tmp_path / "config.yml"
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_readable_config_with_a_plain_secret_warns(tmp_path, caplog):
    path = write_config(tmp_path, "accountId: a\nbucketId: b\napplicationKey: K001secret\n", 0o644)
    config = parse(path.read_text(), str(path))
    with caplog.at_level(logging.WARNING, logger="zero.remote.registry"):
        check_remotes(config)
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert str(path) in message and f"chmod 600 {path}" in message and "applicationKey" in message
    assert "K001secret" not in message


@pytest.mark.parametrize("text, mode", [
    ("accountId: a\nbucketId: b\napplicationKey: K001secret\n", 0o600),   # the file is private
    ("accountId: a\nbucketId: b\napplicationKeyEnv: HOME\n", 0o644),     # no secret in the file
])
def test_no_warning_without_an_exposed_secret(tmp_path, caplog, text, mode):
    path = write_config(tmp_path, text, mode)
    with caplog.at_level(logging.WARNING):
        check_remotes(parse(path.read_text(), str(path)))
    assert caplog.records == []


def test_build_gives_a_remote_of_the_configured_kind(tmp_path):
    remote = registry.build(RemoteSpec(name="home", kind="local", options={"path": str(tmp_path)}, where="x"))
    assert remote.kind == "local" and remote.name == "home" and remote.root == str(tmp_path)
