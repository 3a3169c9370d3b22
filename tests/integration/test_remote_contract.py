"""One contract every remote keeps, then the local folder's own border, then the pool.

The ``remote`` fixture (conftest.py beside this file) runs each check over a
local folder, S3 on a moto server, B2 on b2sdk's simulator, and real buckets
when their credentials are set. To check another kind of remote, add a
factory to REMOTE_FACTORIES there.
"""

import errno
import os
import random
import threading
import time
import types

import pytest
from remote_factories import b2_remote, moto_s3

from zero.config import RemoteSpec, parse
from zero.errors import AuthFailed, ConfigError, ObjectCorrupt, ObjectMissing, RemoteUnavailable
from zero.remote import layout, pool as pool_module
from zero.remote.codec import Codec
from zero.remote.local import LocalRemote
from zero.remote.pool import HEALTHY, UNAVAILABLE, UNHEALTHY, RemotePool
from zero.remote.registry import build as build_remote
from zero.wiring import build_pool

MIB = 1024 * 1024
KEY = "fs1/objects/ab/ab0123456789"


def local_folder(tmp_path):
    folder = tmp_path / "remote"
    folder.mkdir()
    return LocalRemote("local", folder)


def prepared(remote):
    """A local remote as zero leaves it after first use: its folder made (prepare)."""
    remote.prepare()
    return remote


def data_of(size, seed=0):
    return random.Random(seed).randbytes(size)


def listed(remote, prefix=""):
    return sorted(key for key, _, _ in remote.list(prefix))


# -- the contract -----------------------------------------------------------

def test_put_get_head(remote):
    remote.put(KEY, b"hello")
    assert remote.get(KEY) == b"hello"
    assert remote.head(KEY) == 5


def test_empty_object(remote):
    remote.put(KEY, b"")
    assert remote.get(KEY) == b""
    assert remote.head(KEY) == 0


def test_missing_object(remote):
    remote.put("fs1/objects/ab/other", b"x")
    with pytest.raises(ObjectMissing):
        remote.get(KEY)
    assert remote.head(KEY) is None


def test_a_folder_of_keys_is_not_an_object(remote):
    remote.put("fs1/objects/ab/ab01", b"x")
    with pytest.raises(ObjectMissing):
        remote.get("fs1/objects/ab")
    assert remote.head("fs1/objects/ab") is None
    with pytest.raises(ObjectMissing):
        remote.get("fs1/objects/ab/ab01/below")


def test_delete(remote):
    remote.put(KEY, b"hello")
    remote.put(KEY + "-kept", b"kept")
    remote.delete(KEY)
    with pytest.raises(ObjectMissing):
        remote.get(KEY)
    assert remote.head(KEY) is None
    assert listed(remote) == [KEY + "-kept"]


def test_delete_of_missing_is_fine(remote):
    remote.delete(KEY)
    remote.put(KEY, b"x")
    remote.delete(KEY)
    remote.delete(KEY)
    assert remote.head(KEY) is None


def test_put_twice(remote):
    remote.put(KEY, b"same")
    remote.put(KEY, b"same")
    assert remote.get(KEY) == b"same"
    assert listed(remote) == [KEY]


def test_put_again_with_a_new_seal_leaves_one_whole_copy(remote):
    # The same plaintext sealed twice differs by its nonce.
    first, second = data_of(1000, seed=1), data_of(1000, seed=2)
    remote.put(KEY, first)
    remote.put(KEY, second)
    assert remote.get(KEY) in (first, second)


def test_keys_with_slashes_do_not_collide(remote):
    keys = {"a/b": b"1", "a/b2": b"2", "a/bc/d": b"3", "a/b3/c/d/e/f": b"4", "ab": b"5"}
    for key, data in keys.items():
        remote.put(key, data)
    for key, data in keys.items():
        assert remote.get(key) == data
    assert listed(remote) == sorted(keys)


def test_list_with_prefixes(remote):
    keys = ["fs1/objects/ab/ab01", "fs1/objects/ab/ab02", "fs1/objects/cd/cd01",
            "fs1/meta/backup-1", "fs10/objects/ab/ab01", "fs2/objects/ab/ab01"]
    for key in keys:
        remote.put(key, key.encode())
    assert listed(remote) == sorted(keys)
    assert listed(remote, "fs1/") == sorted(keys[:4])
    assert listed(remote, "fs1") == sorted(keys[:5])
    assert listed(remote, "fs1/objects/") == sorted(keys[:3])
    assert listed(remote, "fs1/objects/ab/") == keys[:2]
    assert listed(remote, "fs1/objects/a") == keys[:2]
    assert listed(remote, "fs1/objects/ab/ab02") == ["fs1/objects/ab/ab02"]
    assert listed(remote, "fs1/objects/ab/ab0") == keys[:2]
    assert listed(remote, "fs3/") == []
    assert listed(remote, "fs1/objects/ab/ab03") == []


def test_list_gives_size_and_mtime(remote):
    before = time.time()
    remote.put("fs1/objects/ab/small", b"12345")
    remote.put("fs1/objects/cd/large", data_of(70000))
    after = time.time()
    entries = {key: (size, mtime) for key, size, mtime in remote.list("fs1/")}
    assert {key: size for key, (size, _) in entries.items()} == {
        "fs1/objects/ab/small": 5, "fs1/objects/cd/large": 70000}
    for _, mtime in entries.values():
        assert isinstance(mtime, float)
        # A file system may round timestamps down to its own resolution.
        assert before - 2 <= mtime <= after + 2


def test_list_of_empty_remote(remote):
    assert listed(remote) == []


def test_large_object(remote):
    data = data_of(5 * MIB, seed=5)
    remote.put(KEY, data)
    assert remote.head(KEY) == 5 * MIB
    assert remote.get(KEY) == data


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "a/", "../escape", "a/../../b", "a/./b", ".tmp/x", "a\\b"])
def test_bad_keys_are_refused(remote, key):
    for call in (lambda: remote.put(key, b"x"), lambda: remote.get(key),
                 lambda: remote.head(key), lambda: remote.delete(key)):
        with pytest.raises(ValueError):
            call()


def test_transient_errors(remote):
    assert remote.is_transient(RemoteUnavailable("offline"))
    assert not remote.is_transient(RemoteUnavailable("no such bucket", transient=False))
    assert not remote.is_transient(AuthFailed("wrong key"))
    assert not remote.is_transient(ObjectMissing("gone"))
    assert not remote.is_transient(ObjectCorrupt("bad"))


def test_list_pages(remote):
    if hasattr(remote, "page_size"):
        remote.page_size = 2  # several list requests for the seven objects
    keys = [f"fs1/objects/{n:02x}/{n:02x}00" for n in range(7)]
    for key in keys:
        remote.put(key, b"x")
    remote.put("fs2/objects/00/0000", b"other filesystem")
    assert listed(remote, "fs1/objects/") == keys
    assert listed(remote, "fs1/objects/0") == keys
    assert len(listed(remote)) == 8


def test_keys_of_the_layout(remote):
    fs_id = "3f2a9c0e5b7d4e1f"
    digest = "ab" + "0" * 62
    keys = {layout.object_key(fs_id, digest): b"object", layout.marker_key(fs_id): b"{}",
            layout.lock_key(fs_id): b"host", layout.sealed_key_key(fs_id, "data"): b"sealed",
            layout.snapshot_key(fs_id, 7): b"snap", layout.journal_key(fs_id, 8): b"journal"}
    for key, data in keys.items():
        remote.put(key, data)
    for key, data in keys.items():
        assert remote.get(key) == data
    assert listed(remote, layout.objects_prefix(fs_id)) == [layout.object_key(fs_id, digest)]
    assert [layout.parse_snapshot_key(fs_id, key) for key in listed(remote, layout.snapshots_prefix(fs_id))] == [7]
    assert [layout.parse_journal_key(fs_id, key) for key in listed(remote, layout.journals_prefix(fs_id))] == [8]
    assert listed(remote, fs_id + "/") == sorted(keys)


def test_wrong_credentials_are_auth_failed(refusing_remote):
    for call in (lambda: refusing_remote.put(KEY, b"x"), lambda: refusing_remote.get(KEY),
                 lambda: refusing_remote.head(KEY), lambda: listed(refusing_remote)):
        with pytest.raises(AuthFailed) as caught:
            call()
        assert not refusing_remote.is_transient(caught.value)
        assert refusing_remote.name in str(caught.value)


def test_unreachable_endpoint_is_transient(unreachable_remote):
    for call in (lambda: unreachable_remote.put(KEY, b"x"), lambda: unreachable_remote.get(KEY),
                 lambda: unreachable_remote.head(KEY), lambda: unreachable_remote.delete(KEY),
                 lambda: listed(unreachable_remote)):
        with pytest.raises(RemoteUnavailable) as caught:
            call()
        assert not isinstance(caught.value, AuthFailed)
        assert unreachable_remote.is_transient(caught.value)
        assert unreachable_remote.is_transient(caught.value.__cause__)  # the SDK's own error, judged alike


def test_b2_large_objects_use_the_large_file_api(tmp_path, request):
    remote = b2_remote(request, tmp_path)
    simulator = remote._api.session.raw_api
    remote.put(KEY, data_of(100 * 1024))
    assert type(simulator).large_files_started == 0
    data = data_of(3 * MIB + 5, seed=3)
    remote.put(KEY, data)
    assert type(simulator).large_files_started == 1
    assert remote.get(KEY) == data
    assert remote.head(KEY) == len(data)


def test_b2_delete_removes_every_version(tmp_path, request):
    remote = b2_remote(request, tmp_path)
    remote.put(KEY, b"one")
    remote.put(KEY, b"two")
    assert len(list(remote._connected().list_file_versions(KEY))) == 2
    remote.delete(KEY)
    assert list(remote._connected().list_file_versions(KEY)) == []


def test_s3_missing_bucket_is_unavailable_for_good(moto_endpoint):
    remote = moto_s3(moto_endpoint, "zero-no-such-bucket")
    with pytest.raises(RemoteUnavailable, match="bucket does not exist") as caught:
        remote.put(KEY, b"x")
    assert not remote.is_transient(caught.value)


@pytest.mark.parametrize("code, status, expected, transient", [
    ("NoSuchKey", 404, ObjectMissing, False),
    ("AccessDenied", 403, AuthFailed, False),
    ("SignatureDoesNotMatch", 403, AuthFailed, False),
    ("InvalidAccessKeyId", 403, AuthFailed, False),
    ("SlowDown", 503, RemoteUnavailable, True),
    ("InternalError", 500, RemoteUnavailable, True),
    ("RequestTimeout", 400, RemoteUnavailable, True),
    ("TooManyRequests", 429, RemoteUnavailable, True),
    ("NoSuchBucket", 404, RemoteUnavailable, False),
    ("InvalidArgument", 400, RemoteUnavailable, False),
])
def test_s3_error_codes(code, status, expected, transient):
    from botocore.exceptions import ClientError

    remote = moto_s3("http://127.0.0.1:1", "zero-codes")
    error = ClientError({"Error": {"Code": code, "Message": "any text"},
                         "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")
    translated = remote.translate(error, "read", KEY)
    assert type(translated) is expected
    assert remote.is_transient(error) is transient
    assert remote.is_transient(translated) is transient


@pytest.mark.parametrize("error_name, expected, transient", [
    ("FileNotPresent", ObjectMissing, False),
    ("NonExistentBucket", RemoteUnavailable, False),
    ("InvalidAuthToken", AuthFailed, False),
    ("B2ConnectionError", RemoteUnavailable, True),
    ("B2RequestTimeout", RemoteUnavailable, True),
    ("ServiceError", RemoteUnavailable, True),
    ("TooManyRequests", RemoteUnavailable, True),
])
def test_b2_error_classes(tmp_path, request, error_name, expected, transient):
    from b2sdk.v2 import exception as b2_errors

    remote = b2_remote(request, tmp_path)
    error_class = getattr(b2_errors, error_name)
    error = error_class("code", "message") if error_name == "InvalidAuthToken" else error_class("message")
    translated = remote.translate(error, "read", KEY)
    assert type(translated) is expected
    assert remote.is_transient(error) is transient


# -- the local folder at its border -------------------------------------------

def broken_local(tmp_path, name="broken"):
    """A remote whose folder cannot exist: part of its path is a regular file.
    (chmod would not stop root, who may run these tests.)"""
    blocker = tmp_path / f"{name}-file"
    blocker.write_bytes(b"not a folder")
    return LocalRemote(name, blocker / "sub")


def test_local_unusable_folder_is_unavailable_and_named(tmp_path):
    remote = broken_local(tmp_path)
    with pytest.raises(RemoteUnavailable) as caught:
        remote.prepare()
    message = str(caught.value)
    assert str(tmp_path / "broken-file" / "sub") in message
    assert "is a file, not a folder" in message
    # Reads must not say "missing": that could make a collector forget copies.
    for call in (lambda: remote.get(KEY), lambda: remote.head(KEY),
                 lambda: remote.delete(KEY), lambda: listed(remote)):
        with pytest.raises(RemoteUnavailable, match=str(tmp_path / "broken-file")):
            call()


def test_local_folder_is_created_by_prepare_and_never_by_a_put(tmp_path):
    """A folder renamed away, or a drive not mounted, must not be re-created
    empty by the next upload: only prepare (zero's first use) makes the folder."""
    folder = tmp_path / "not" / "yet"
    remote = LocalRemote("fresh", folder)
    with pytest.raises(RemoteUnavailable, match="not mounted"):
        remote.get(KEY)
    with pytest.raises(RemoteUnavailable, match="not mounted"):
        remote.put(KEY, b"x")
    assert not folder.exists()
    remote.prepare()
    remote.put(KEY, b"x")
    assert (folder / "fs1" / "objects" / "ab" / "ab0123456789").read_bytes() == b"x"
    assert remote.get(KEY) == b"x"
    folder.rename(tmp_path / "moved-away")
    with pytest.raises(RemoteUnavailable, match="not mounted"):
        remote.put(KEY, b"x")
    assert not folder.exists()


def test_local_new_folders_are_made_durable(tmp_path, monkeypatch):
    # A power cut must not lose a new folder's entry, and the object with it.
    import zero.remote.local
    synced = []
    real_fsync_dir = zero.remote.local.fsync_dir
    monkeypatch.setattr(zero.remote.local, "fsync_dir", lambda folder: synced.append(folder) or real_fsync_dir(folder))
    remote = local_folder(tmp_path)
    remote.put(KEY, b"x")
    root = str(tmp_path / "remote")
    assert sorted(synced) == [root, root, f"{root}/fs1", f"{root}/fs1/objects"]  # .tmp and fs1, objects, ab


def test_local_path_expands_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    remote = prepared(LocalRemote("home", "~/zero-remote"))
    remote.put(KEY, b"x")
    assert (tmp_path / "zero-remote" / KEY).read_bytes() == b"x"


def test_local_failed_put_leaves_nothing(tmp_path, monkeypatch):
    remote = local_folder(tmp_path)

    def failing_fsync(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(RemoteUnavailable, match="I/O error"):
        remote.put(KEY, b"x" * 1000)
    monkeypatch.undo()
    with pytest.raises(ObjectMissing):
        remote.get(KEY)
    assert listed(remote) == []
    leftovers = [name for _, _, names in os.walk(tmp_path / "remote") for name in names]
    assert leftovers == []


def test_local_full_disk_is_unavailable_with_a_hint(tmp_path, monkeypatch):
    remote = local_folder(tmp_path)

    def full_disk(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(RemoteUnavailable, match="disk is full") as caught:
        remote.put(KEY, b"x")
    assert str(tmp_path / "remote") in str(caught.value)


def test_local_temporary_files_are_not_listed(tmp_path):
    remote = local_folder(tmp_path)
    remote.put(KEY, b"x")
    (tmp_path / "remote" / ".tmp" / ".tmp-1-crashed").write_bytes(b"half")
    assert listed(remote) == [KEY]


def test_local_concurrent_puts_of_one_key_leave_one_whole_copy(tmp_path):
    remote = local_folder(tmp_path)
    copies = [data_of(256 * 1024, seed=seed) for seed in range(8)]
    start = threading.Barrier(len(copies))
    errors = []

    def put(data):
        start.wait(timeout=10)
        try:
            remote.put(KEY, data)
        except Exception as error:  # reported below; a thread cannot raise into the test
            errors.append(error)

    threads = [threading.Thread(target=put, args=(data,)) for data in copies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert remote.get(KEY) in copies
    assert listed(remote) == [KEY]


def test_build_remote_from_spec(tmp_path):
    remote = build_remote(RemoteSpec(name="home", kind="local", options={"path": str(tmp_path / "r")}))
    assert isinstance(remote, LocalRemote)
    assert remote.name == "home"
    remote.prepare()
    remote.put(KEY, b"x")
    assert (tmp_path / "r" / KEY).read_bytes() == b"x"


def test_build_remote_unknown_kind():
    with pytest.raises(ConfigError, match="unknown remote type 'ftp'"):
        build_remote(RemoteSpec(name="old", kind="ftp", options={}))


# -- the pool ------------------------------------------------------------------

@pytest.fixture
def two(tmp_path):
    return prepared(LocalRemote("a", tmp_path / "a")), prepared(LocalRemote("b", tmp_path / "b"))


def test_pool_puts_replicas_copies(two):
    a, b = two
    pool = RemotePool([a, b], replicas=2)
    assert pool.put(KEY, b"data") == ["a", "b"]
    assert a.get(KEY) == b"data"
    assert b.get(KEY) == b"data"


def test_pool_puts_on_the_first_remotes_only(two):
    a, b = two
    pool = RemotePool([a, b], replicas=1)
    assert pool.put(KEY, b"data") == ["a"]
    assert a.head(KEY) == 4
    assert b.head(KEY) is None


def test_pool_put_skips_a_broken_remote(tmp_path, caplog):
    broken, good = broken_local(tmp_path), prepared(LocalRemote("good", tmp_path / "good"))
    pool = RemotePool([broken, good], replicas=1)
    changes = []
    pool.on_health_change = lambda name, health, error: changes.append((name, health, error))
    assert pool.put(KEY, b"data") == ["good"]
    assert good.get(KEY) == b"data"
    # One health change, published for the worker to record and log; no log line per failed call.
    assert [(name, health) for name, health, _ in changes] == [("broken", UNHEALTHY)]
    assert "'broken'" in changes[0][2]
    assert [record for record in caplog.records if record.levelname == "WARNING"] == []
    assert pool.put(KEY.replace("ab0", "ab1"), b"more") == ["good"]  # an unhealthy remote is not tried again
    assert len(changes) == 1


def test_pool_put_without_enough_remotes(tmp_path, caplog):
    good, broken = prepared(LocalRemote("good", tmp_path / "good")), broken_local(tmp_path)
    pool = RemotePool([good, broken], replicas=2)
    with pytest.raises(RemoteUnavailable) as caught:
        pool.put(KEY, b"data")
    message = str(caught.value)
    assert "1 of the 2" in message
    assert "new copies on: good" in message
    assert "broken" in message and str(tmp_path / "broken-file") in message
    assert pool.health("broken") == UNHEALTHY


def test_pool_get_falls_back_when_a_holder_lost_it(two, caplog):
    a, b = two
    pool = RemotePool([a, b], replicas=2)
    pool.put(KEY, b"data")
    a.delete(KEY)
    assert pool.get(KEY, ["a", "b"]) == b"data"
    assert pool.health("a") == HEALTHY  # one lost object does not make the remote unhealthy


def test_pool_get_falls_back_when_a_holder_is_unavailable(tmp_path):
    broken, good = broken_local(tmp_path), prepared(LocalRemote("good", tmp_path / "good"))
    good.put(KEY, b"data")
    pool = RemotePool([broken, good], replicas=1)
    assert pool.get(KEY, ["broken", "good"]) == b"data"
    assert pool.get(KEY, ["gone-from-config", "good"]) == b"data"


def test_pool_get_tries_remotes_not_read_yet_in_the_config_order(two):
    a, b = two
    a.put(KEY, b"from a")
    b.put(KEY, b"from b")
    assert RemotePool([a, b], replicas=2).get(KEY, ["b", "a"]) == b"from a"
    assert RemotePool([b, a], replicas=2).get(KEY, ["a", "b"]) == b"from b"


def test_pool_get_prefers_the_remote_that_answered_faster(two, monkeypatch):
    a, b = two
    a.put(KEY, b"from a")
    b.put(KEY, b"from b")
    pool = RemotePool([a, b], replicas=2)
    clock = [0.0]  # the pool's clock: a read from a takes a second, one from b takes none
    monkeypatch.setattr(pool_module, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    get_from_a = a.get
    monkeypatch.setattr(a, "get", lambda key: (clock.__setitem__(0, clock[0] + 1.0), get_from_a(key))[1])
    assert pool.get(KEY, ["a", "b"]) == b"from a"  # first listed, nothing measured yet
    assert pool.get(KEY, ["a", "b"]) == b"from b"  # a took longer than b's unmeasured 0
    assert pool.get(KEY, ["a", "b"]) == b"from b"  # b measured faster than a


def test_pool_get_when_no_holder_has_it(two):
    pool = RemotePool(list(two), replicas=2)
    two[0].put("fs1/other", b"x")
    two[1].put("fs1/other", b"x")
    with pytest.raises(ObjectMissing):
        pool.get(KEY, ["a", "b"])
    with pytest.raises(ObjectMissing):
        pool.get(KEY, [])


def test_pool_get_prefers_unavailable_over_missing(tmp_path):
    # An unreachable copy may come back; "missing" would tell the caller it is lost.
    broken, good = broken_local(tmp_path), prepared(LocalRemote("good", tmp_path / "good"))
    good.put("fs1/other", b"x")
    pool = RemotePool([broken, good], replicas=1)
    with pytest.raises(RemoteUnavailable):
        pool.get(KEY, ["broken", "good"])


def test_pool_get_decodes_and_skips_a_corrupt_copy(two, caplog):
    a, b = two
    codec = Codec(bytes(32), bytes(range(32)))
    key = "fs1/objects/" + codec.object_key(b"plaintext")
    pool = RemotePool([a, b], replicas=2)
    pool.put(key, codec.seal(b"plaintext"))
    with open(a.path_of(key), "r+b") as file:
        file.seek(30)
        file.write(b"\xff")
    with pytest.raises(ObjectCorrupt):
        codec.open(a.get(key))

    def decode(blob):
        return codec.open(blob, expected_key=codec.object_key(b"plaintext"))

    assert pool.get(key, ["a", "b"], decode=decode) == b"plaintext"
    assert pool.health("a") == HEALTHY


def test_pool_delete(two):
    a, b = two
    pool = RemotePool([a, b], replicas=2)
    pool.put(KEY, b"data")
    pool.delete(KEY, ["a", "b"])
    assert a.head(KEY) is None and b.head(KEY) is None
    pool.delete(KEY, ["a", "b"])  # again: fine


def test_pool_delete_tries_every_holder(tmp_path):
    good, broken = prepared(LocalRemote("good", tmp_path / "good")), broken_local(tmp_path)
    good.put(KEY, b"data")
    pool = RemotePool([good, broken], replicas=1)
    with pytest.raises(RemoteUnavailable, match="broken"):
        pool.delete(KEY, ["broken", "good"])
    assert good.head(KEY) is None


def test_pool_by_name(two):
    pool = RemotePool(list(two), replicas=1)
    assert pool.by_name("b") is two[1]
    with pytest.raises(RemoteUnavailable, match="no remote named 'c'"):
        pool.by_name("c")


def test_pool_refuses_impossible_settings(two):
    with pytest.raises(ConfigError, match="replicas"):
        RemotePool(list(two), replicas=3)
    with pytest.raises(ConfigError, match="replicas"):
        RemotePool(list(two), replicas=0)
    with pytest.raises(ConfigError, match="own name"):
        RemotePool([two[0], LocalRemote("a", "/elsewhere")], replicas=1)


def test_build_pool_from_config(tmp_path):
    config = parse(f"""
remotes:
  - name: first
    type: local
    path: {tmp_path / 'first'}
  - name: second
    type: local
    path: {tmp_path / 'second'}
replicas: 2
""", "test")
    pool = build_pool(config)
    for remote in pool.remotes:
        remote.prepare()
    assert [remote.name for remote in pool.remotes] == ["first", "second"]
    assert pool.put(KEY, b"data") == ["first", "second"]
    assert (tmp_path / "second" / KEY).read_bytes() == b"data"


# -- placement, health, draining -----------------------------------------------------------

def three(tmp_path, **settings):
    remotes = [prepared(LocalRemote(name, tmp_path / name)) for name in ("one", "two", "three")]
    return remotes, RemotePool(remotes, replicas=1, settings=settings)


def test_pool_fills_remotes_in_proportion_to_their_quotas(tmp_path):
    remotes, pool = three(tmp_path, one={"quota_bytes": 1 * MIB}, two={"quota_bytes": 2 * MIB},
                          three={"quota_bytes": 3 * MIB})
    for index in range(60):
        pool.put(f"fs1/objects/ab/ab{index:04d}", bytes(50_000))
    counts = [len(listed(remote)) for remote in remotes]
    assert counts == [10, 20, 30], counts


def test_pool_without_quotas_places_by_weight_and_respects_a_full_quota(tmp_path):
    remotes, pool = three(tmp_path, one={"weight": 1.0}, two={"weight": 3.0}, three={"quota_bytes": 100})
    for index in range(40):
        pool.put(f"fs1/objects/ab/ab{index:04d}", bytes(1000))
    counts = [len(listed(remote)) for remote in remotes]
    assert counts == [10, 30, 0], counts


def test_pool_never_writes_to_an_unavailable_or_draining_remote_and_never_reads_a_foreign_one(tmp_path):
    remotes, pool = three(tmp_path)
    pool.set_health("one", UNAVAILABLE, "its marker is gone")
    pool.set_draining(["two"])
    assert pool.put(KEY, b"data") == ["three"]
    assert [len(listed(remote)) for remote in remotes] == [0, 0, 1]
    remotes[0].put(KEY, b"not ours")  # a swapped remote that happens to hold the key
    assert pool.get(KEY, ["one", "three"]) == b"data"
    with pytest.raises(RemoteUnavailable, match="unavailable"):
        pool.get(KEY, ["one"])
    assert pool.durable_names() == ["two", "three"]


def test_pool_put_tops_up_to_replicas_counting_existing_holders(tmp_path):
    remotes = [prepared(LocalRemote(name, tmp_path / name)) for name in ("one", "two", "three")]
    pool = RemotePool(remotes, replicas=2)
    assert pool.put(KEY, b"data", holders=["two"]) == ["one"]
    pool.set_health("two", UNHEALTHY, "timed out")
    assert pool.put(KEY, b"data", holders=["one", "two"]) == ["three"]  # an unhealthy holder does not count
