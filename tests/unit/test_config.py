"""config.yml -> Config: every value, every error naming its key, and where the file is found."""

import logging
from pathlib import Path

import pytest

from zero import config
from zero.config import GIB, MIB, RemoteSpec, parse
from zero.errors import ConfigError

REMOTE = "remotes:\n  - name: home\n    type: local\n    path: /srv/zero\n"


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(text, "test.yml")
    return str(caught.value)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A HOME with nothing in it, and no $ZERO_CONFIG."""
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("HOME", str(folder))
    monkeypatch.delenv("ZERO_CONFIG", raising=False)
    return folder


# --- values ------------------------------------------------------------------------


def test_defaults(home):
    parsed = parse("", "test.yml")
    assert parsed.source == "test.yml"
    assert parsed.target_disk_usage_bytes == 10 * GIB
    assert parsed.chunk_size_bytes == 4 * MIB
    assert parsed.replicas == 1
    assert parsed.upload_delay_s == 5.0
    assert parsed.fsync_waits_for_upload is True
    assert parsed.log_level == "INFO"
    # No remotes given: one local folder under HOME stands in for the cloud.
    assert len(parsed.remotes) == 1
    assert parsed.remotes[0].kind == "local"
    assert parsed.remotes[0].options["path"] == str(home / ".local/share/zero/remote")


def test_a_comment_only_file_is_the_defaults(home):
    assert parse("# nothing set yet\n", "test.yml").target_disk_usage_bytes == 10 * GIB


def test_original_zero_keys_become_one_b2_remote_first(tmp_path):
    parsed = parse(
        "accountId: abc123\napplicationKey: K001secret\nbucketId: bucket-9\n"
        f"sqliteFileLocation: {tmp_path}/zero.db\ntargetDiskUsage: 20\n" + REMOTE, "test.yml")
    assert parsed.remotes == (
        RemoteSpec(name="b2", kind="b2", where="",
                   options={"accountId": "abc123", "applicationKey": "K001secret", "bucketId": "bucket-9"}),
        RemoteSpec(name="home", kind="local", where="remotes[0]", options={"path": "/srv/zero"}),
    )
    assert parsed.target_disk_usage_bytes == 20 * GIB
    assert parsed.database_path(tmp_path / "cache") == tmp_path / "zero.db"
    assert not hasattr(parsed, "b2_account_id")


def test_database_defaults_to_the_cache_folder(tmp_path):
    assert parse(REMOTE, "t").database_path(tmp_path / "cache") == tmp_path / "cache" / "state.sqlite3"


def test_original_zero_keys_alone_replace_the_default_remote(home):
    parsed = parse("accountId: abc123\napplicationKeyEnv: B2_KEY\nbucketId: bucket-9\n", "test.yml")
    assert [(r.name, r.kind) for r in parsed.remotes] == [("b2", "b2")]
    assert parsed.remotes[0].options == {"accountId": "abc123", "applicationKeyEnv": "B2_KEY", "bucketId": "bucket-9"}


def test_original_zero_keys_and_a_remote_named_b2_collide():
    message = error_of("accountId: abc\nremotes:\n  - {name: b2, type: local, path: /a}\n")
    assert "named 'b2'" in message and "rename" in message


def test_original_zero_key_without_a_value_is_named():
    assert "bucketId has no value" in error_of("accountId: abc\nbucketId:\n")


@pytest.mark.parametrize("value, expected", [
    (20, 20 * GIB),                 # a bare number is GB, as in the original Zero
    (1.5, int(1.5 * GIB)),
    ('"500MiB"', 500 * MIB),
    ('"20GB"', 20 * GIB),           # GB is GiB, as in rclone (docs/decisions.md)
    ('"100M"', 100 * 1024**2),      # M is MiB, as in rclone
    ('"100MiB"', 100 * 1024**2),
    ('"1.5GiB"', int(1.5 * GIB)),
    ('"20 gib"', 20 * GIB),
    ('"4096"', 4096 * GIB),         # a bare number in quotes is still GB
    ('"1TiB"', 1024**4),
])
def test_target_disk_usage_sizes(value, expected):
    assert parse(f"targetDiskUsage: {value}\n" + REMOTE, "t").target_disk_usage_bytes == expected


@pytest.mark.parametrize("value, words", [
    ("0", ["targetDiskUsage", "larger than zero"]),
    ("-5", ["targetDiskUsage", "negative", "-5"]),
    ('"-5GB"', ["targetDiskUsage", "negative"]),
    ('"lots"', ["targetDiskUsage", "'lots'", "20GB"]),
    ('"20 parsecs"', ["targetDiskUsage", "unknown unit 'parsecs'", "1024"]),
    ("true", ["targetDiskUsage", "True"]),
    ("[1, 2]", ["targetDiskUsage", "list"]),
])
def test_target_disk_usage_errors_name_the_key(value, words):
    message = error_of(f"targetDiskUsage: {value}\n")
    for word in words:
        assert word in message


@pytest.mark.parametrize("value, expected", [
    ("65536", 64 * 1024),
    ('"64KiB"', 64 * 1024),
    ('"1MiB"', MIB),
    ('"256MiB"', 256 * MIB),
])
def test_chunk_size_accepts_powers_of_two_in_bounds(value, expected):
    assert parse(f"chunkSize: {value}\n", "t").chunk_size_bytes == expected


@pytest.mark.parametrize("value", ['"3MiB"', '"32KiB"', '"512MiB"', "100000", '"3MB"', "0"])
def test_chunk_size_rejects_others(value):
    message = error_of(f"chunkSize: {value}\n")
    assert message.startswith("chunkSize:")
    assert "power of two between 64KiB and 256MiB" in message


def test_every_other_key(home):
    parsed = parse(
        "replicas: 2\nuploadDelay: 0.5\nfaultInTimeout: 15\nfsyncWaitsForUpload: false\ncapacity: 2048\n"
        "lowWatermark: 0.8\nprefetchChunks: 0\ngcGracePeriod: 60\nminFreeDisk: 1MiB\nlogLevel: debug\n"
        "scrubRate: 1M\nremotes:\n  - {name: a, type: local, path: /a}\n  - {name: b, type: local, path: /b}\n", "t")
    assert parsed.replicas == 2
    assert parsed.upload_delay_s == 0.5
    assert parsed.fault_in_timeout_s == 15.0
    assert parsed.fsync_waits_for_upload is False
    assert parsed.capacity_bytes == 2048 * GIB
    assert parsed.low_watermark == 0.8
    assert parsed.prefetch_chunks == 0
    assert parsed.gc_grace_period_s == 60.0
    assert parsed.min_free_disk_bytes == MIB
    assert parsed.log_level == "DEBUG"
    assert parsed.scrub_rate_bytes_per_s == MIB
    assert [r.name for r in parsed.remotes] == ["a", "b"]
    assert parsed.remotes[1].options == {"path": "/b"}


# --- errors ---------------------------------------------------------------------------


def test_malformed_yaml_names_the_line():
    message = error_of("targetDiskUsage: 20GB\nchunkSize: 4MiB\n  uploadDelay: 5\n")
    assert message.startswith("test.yml: the YAML does not parse at line 3")
    assert "fix that line" in message


def test_unclosed_bracket_names_a_line():
    message = error_of("remotes: [\n  {name: a\n")
    assert "does not parse at line" in message


def test_not_a_mapping():
    message = error_of("- targetDiskUsage: 20GB\n")
    assert "expected a mapping" in message and "list" in message


def test_unknown_key_suggests_the_near_one():
    message = error_of("targetDiskUsge: 20GB\n")
    assert "unknown key 'targetDiskUsge'" in message
    assert "did you mean 'targetDiskUsage'?" in message


def test_unknown_key_in_another_case_suggests_the_right_case():
    assert "did you mean 'chunkSize'?" in error_of("CHUNKSIZE: 4MiB\n")


def test_unknown_key_far_from_all_gets_no_guess():
    message = error_of("colour: blue\n")
    assert "unknown key 'colour'" in message
    assert "did you mean" not in message


def test_wrong_type_names_the_key():
    message = error_of('uploadDelay: "soon"\n')
    assert message.startswith("uploadDelay:")
    assert "not a duration" in message and "'soon'" in message


@pytest.mark.parametrize("key, field", [("uploadDelay", "upload_delay_s"), ("faultInTimeout", "fault_in_timeout_s"),
                                        ("gcGracePeriod", "gc_grace_period_s")])
@pytest.mark.parametrize("text, seconds", [("10s", 10), ("5m", 300), ("1h", 3600), ("1h30m", 5400), ("2", 2),
                                           ("500ms", 0.5), ("1d", 86400)])
def test_every_time_key_takes_durations(key, field, text, seconds):
    assert getattr(parse(f"{key}: {text}\n" + REMOTE, "t"), field) == seconds


def test_a_duration_with_an_unknown_unit_names_the_units():
    message = error_of("faultInTimeout: 10 fortnights\n")
    assert message.startswith("faultInTimeout:") and "unknown unit 'fortnights'" in message and "ms, s, m, h" in message


@pytest.mark.parametrize("text, key", [
    ("fsyncWaitsForUpload: 1\n", "fsyncWaitsForUpload"),
    ("replicas: 1.5\n", "replicas"),
    ("prefetchChunks: yes\n", "prefetchChunks"),
    ("logLevel: loud\n", "logLevel"),
    ("lowWatermark: 2\n", "lowWatermark"),
    ("faultInTimeout: 0\n", "faultInTimeout"),
    ("uploadDelay: -1\n", "uploadDelay"),
    ("replicas: 0\n", "replicas"),
])
def test_bad_values_name_their_key(text, key):
    assert error_of(text).startswith(f"{key}:")


def test_a_key_with_no_value_is_named():
    message = error_of("targetDiskUsage:\n")
    assert "targetDiskUsage has no value" in message


@pytest.mark.parametrize("key", ["minFreeDisk", "capacity", "targetDiskUsage", "scrubRate"])
def test_negative_size_names_the_key(key):
    message = error_of(f"{key}: -1GB\n")
    assert message.startswith(f"{key}:")
    assert "cannot be negative" in message


# --- remotes -------------------------------------------------------------------------------


def test_remotes_must_be_a_non_empty_list():
    assert error_of("remotes: []\n").startswith("remotes: expected a list")
    assert error_of("remotes: /srv/zero\n").startswith("remotes: expected a list")








def test_remote_needs_a_type():
    message = error_of("remotes:\n  - {name: a, path: /a}\n")
    assert message.startswith("remotes[0].type:")
    assert "local, s3 or b2" in message


def test_misspelt_type_is_named():
    assert "did you mean 'type'?" in error_of("remotes:\n  - {name: a, tpye: local, path: /a}\n")


def test_the_kinds_own_keys_are_left_to_the_registry():
    # config.py knows no remote class: an unknown kind parses, the registry refuses it (test_registry.py).
    parsed = parse("remotes:\n  - {name: a, type: ftp, host: x}\n", "t")
    assert parsed.remotes == (RemoteSpec(name="a", kind="ftp", options={"host": "x"}, where="remotes[0]"),)


def test_remote_names_must_be_unique():
    message = error_of("remotes:\n  - {name: a, type: local, path: /a}\n  - {name: a, type: local, path: /b}\n")
    assert message.startswith("remotes[1].name:")
    assert "'a' is used twice" in message






def test_remote_entry_must_be_a_mapping():
    assert error_of("remotes:\n  - /srv/zero\n").startswith("remotes[0]:")


def test_unnamed_remotes_get_names():
    parsed = parse("remotes:\n  - {type: local, path: /a}\n  - {type: local, path: /b}\n", "t")
    assert [r.name for r in parsed.remotes] == ["local0", "local1"]


def test_replicas_more_than_remotes():
    message = error_of("replicas: 2\n" + REMOTE)
    assert message.startswith("replicas:")
    assert "2 copies" in message and "only 1 remote" in message


def test_replicas_more_than_the_default_remote(home):
    assert error_of("replicas: 3\n").startswith("replicas:")


# --- where the file is found -------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_explicit_path_wins_over_everything(home, tmp_path, monkeypatch):
    explicit = write(tmp_path / "explicit.yml", "targetDiskUsage: 1\n")
    env = write(tmp_path / "env.yml", "targetDiskUsage: 2\n")
    write(home / ".config/zero/config.yml", "targetDiskUsage: 3\n")
    monkeypatch.setenv("ZERO_CONFIG", str(env))
    loaded = config.load(str(explicit))
    assert loaded.target_disk_usage_bytes == 1 * GIB
    assert loaded.source == str(explicit)


def test_zero_config_wins_over_home(home, tmp_path, monkeypatch):
    env = write(tmp_path / "env.yml", "targetDiskUsage: 2\n")
    write(home / ".config/zero/config.yml", "targetDiskUsage: 3\n")
    monkeypatch.setenv("ZERO_CONFIG", str(env))
    loaded = config.load()
    assert loaded.target_disk_usage_bytes == 2 * GIB
    assert loaded.source == str(env)


def test_home_config_is_found(home):
    path = write(home / ".config/zero/config.yml", "targetDiskUsage: 3\n")
    loaded = config.load()
    assert loaded.target_disk_usage_bytes == 3 * GIB
    assert loaded.source == str(path)


def test_default_config_path_can_be_moved(home, tmp_path, monkeypatch):
    path = write(tmp_path / "elsewhere.yml", "targetDiskUsage: 4\n")
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", path)
    assert config.load().target_disk_usage_bytes == 4 * GIB


def test_no_file_means_the_embedded_default(home, caplog):
    with caplog.at_level(logging.INFO, logger="zero.config"):
        loaded = config.load()
    assert loaded.source == "embedded default"
    folder = str(home / ".local/share/zero/remote")
    assert [(r.kind, r.options["path"]) for r in loaded.remotes] == [("local", folder)]
    assert loaded.target_disk_usage_bytes == 10 * GIB
    assert "embedded default" in caplog.text
    assert folder in caplog.text


def test_explicit_missing_path_is_an_error(home, tmp_path):
    with pytest.raises(ConfigError, match=r"--config .*missing\.yml: no such file"):
        config.load(str(tmp_path / "missing.yml"))


def test_zero_config_missing_is_an_error(home, tmp_path, monkeypatch):
    monkeypatch.setenv("ZERO_CONFIG", str(tmp_path / "missing.yml"))
    with pytest.raises(ConfigError, match=r"ZERO_CONFIG=.*missing\.yml: no such file"):
        config.load()


def test_errors_from_a_file_name_the_file(home, tmp_path):
    path = write(tmp_path / "bad.yml", "targetDiskUsge: 20GB\n")
    with pytest.raises(ConfigError) as caught:
        config.load(str(path))
    assert str(caught.value).startswith(f"{path}: unknown key")


def test_a_file_that_is_not_text_is_a_config_error(home, tmp_path):
    path = tmp_path / "binary.yml"
    path.write_bytes(b"targetDiskUsage: \xff\xfe 20GB\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        config.load(str(path))
