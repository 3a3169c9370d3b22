"""Remotes for the contract suite: a local folder, S3 on a moto server on
127.0.0.1, B2 on b2sdk's RawSimulator, and real buckets only when their
credentials are in the environment.

Each factory takes (request, tmp_path) and returns a ready, empty remote.
"""

import os
import socket
import time
import uuid

import pytest

MOTO_REGION = "us-east-1"
MOTO_KEY_ID, MOTO_SECRET = "zero-test-key", "zero-test-secret"
SMALL_PART_BYTES = 1024 * 1024  # B2's large-file API for anything over 1 MiB in the tests


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (it was just free)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- local ---------------------------------------------------------------------------------

def local_remote(request, tmp_path):
    from zero.remote.local import LocalRemote

    folder = tmp_path / "remote"
    folder.mkdir()
    return LocalRemote("local", folder)


# -- s3 ------------------------------------------------------------------------------------

def moto_s3(endpoint, bucket=None, **options):
    from zero.remote.s3 import S3Remote

    return S3Remote("s3", bucket or "zero-none", endpoint=endpoint, region=MOTO_REGION, path_style=True,
                    access_key_id=options.pop("access_key_id", MOTO_KEY_ID),
                    secret_access_key=options.pop("secret_access_key", MOTO_SECRET), **options)


def s3_remote(request, tmp_path):
    import boto3

    endpoint = request.getfixturevalue("moto_endpoint")
    bucket = f"zero-{uuid.uuid4().hex[:16]}"
    boto3.client("s3", endpoint_url=endpoint, region_name=MOTO_REGION, aws_access_key_id=MOTO_KEY_ID,
                 aws_secret_access_key=MOTO_SECRET).create_bucket(Bucket=bucket)
    return moto_s3(endpoint, bucket)


def s3_refusing(request, tmp_path):
    """An S3 remote whose credentials moto refuses: moto checks them only while
    its auth is switched on, for this test alone."""
    import requests

    remote = s3_remote(request, tmp_path)
    endpoint = request.getfixturevalue("moto_endpoint")
    requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
    request.addfinalizer(lambda: requests.post(f"{endpoint}/moto-api/reset-auth", data=b"inf", timeout=10))
    return remote


def s3_unreachable(request, tmp_path):
    return moto_s3(f"http://127.0.0.1:{closed_port()}", "zero-unreachable")


def real_s3(request, tmp_path):
    from zero.remote.s3 import S3Remote

    bucket = os.environ.get("ZERO_TEST_S3_BUCKET")
    if not bucket:
        pytest.skip("a real S3 bucket is tested only with ZERO_TEST_S3_BUCKET and AWS credentials set")
    prefix = f"zero-test/{uuid.uuid4().hex}/"
    remote = S3Remote("s3-real", bucket, endpoint=os.environ.get("ZERO_TEST_S3_ENDPOINT"),
                      region=os.environ.get("ZERO_TEST_S3_REGION"), prefix=prefix)
    request.addfinalizer(lambda: [remote.delete(key) for key, _, _ in list(remote.list())])
    return remote


# -- b2 ------------------------------------------------------------------------------------

def simulated_b2_api():
    """A b2sdk API whose server is RawSimulator, with one account and one bucket."""
    from b2sdk.v2 import B2HttpApiConfig, InMemoryAccountInfo, RawSimulator

    from zero.remote.b2 import _OneTryB2Api

    class CountingSimulator(RawSimulator):
        large_files_started = 0

        def start_large_file(self, *args, **kwargs):
            type(self).large_files_started += 1
            return super().start_large_file(*args, **kwargs)

    api = _OneTryB2Api(InMemoryAccountInfo(), api_config=B2HttpApiConfig(_raw_api_class=CountingSimulator))
    simulator = api.session.raw_api
    key_id, key = simulator.create_account()
    api.authorize_account("production", key_id, key)
    bucket = api.create_bucket("zero-test", "allPrivate")
    # The simulator counts upload times from 5 s after 1970; the contract wants real ones.
    simulator.bucket_id_to_bucket[bucket.id_].upload_timestamp_counter = iter(lambda: int(time.time() * 1000), None)
    return api, key_id, key


def b2_remote(request, tmp_path, application_key=None):
    from zero.remote.b2 import B2Remote

    api, key_id, key = simulated_b2_api()
    remote = B2Remote("b2", key_id, application_key or key, bucket="zero-test", api=api)
    remote.large_file_part_bytes = SMALL_PART_BYTES
    return remote


def b2_refusing(request, tmp_path):
    remote = b2_remote(request, tmp_path, application_key="not-the-key")
    remote._api.account_info.clear()  # forget the fixture's own authorization
    return remote


def b2_unreachable(request, tmp_path):
    from zero.remote.b2 import B2Remote

    remote = B2Remote("b2", "no-account", "no-key", bucket="zero-unreachable")
    remote.realm = f"http://127.0.0.1:{closed_port()}"
    return remote


def real_b2(request, tmp_path):
    from zero.remote.b2 import B2Remote

    needed = ("ZERO_TEST_B2_KEY_ID", "ZERO_TEST_B2_KEY", "ZERO_TEST_B2_BUCKET")
    if not all(os.environ.get(name) for name in needed):
        pytest.skip("a real B2 bucket is tested only with " + ", ".join(needed) + " set")
    remote = B2Remote("b2-real", os.environ["ZERO_TEST_B2_KEY_ID"], os.environ["ZERO_TEST_B2_KEY"],
                      bucket=os.environ["ZERO_TEST_B2_BUCKET"], prefix=f"zero-test/{uuid.uuid4().hex}/")
    remote.large_file_part_bytes = 5 * SMALL_PART_BYTES  # B2's smallest part
    request.addfinalizer(lambda: [remote.delete(key) for key, _, _ in list(remote.list())])
    return remote


def rclone_remote(request, tmp_path):
    """rclone serving a local folder over S3, as it would serve Google Drive or SFTP."""
    from zero.remote.rclone import RcloneRemote

    folder = tmp_path / "rclone-root"
    folder.mkdir()
    remote = RcloneRemote("rclone", str(folder))
    request.addfinalizer(remote.close)
    remote.prepare()
    return remote


REMOTE_FACTORIES = [
    pytest.param(local_remote, id="local"),
    pytest.param(rclone_remote, id="rclone-local"),
    pytest.param(s3_remote, id="s3-moto"),
    pytest.param(b2_remote, id="b2-simulator"),
    pytest.param(real_s3, id="s3-real"),
    pytest.param(real_b2, id="b2-real"),
]
REFUSING_FACTORIES = [pytest.param(s3_refusing, id="s3-moto"), pytest.param(b2_refusing, id="b2-simulator")]
UNREACHABLE_FACTORIES = [pytest.param(s3_unreachable, id="s3"), pytest.param(b2_unreachable, id="b2")]
