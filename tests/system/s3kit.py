"""A real S3 server for the system tests: moto's server mode on 127.0.0.1, started
and stopped by the test that asks for the ``s3`` fixture (tests/system/conftest.py)."""

from __future__ import annotations

import socket
import uuid

import boto3

REGION = "us-east-1"
KEY_ID, SECRET = "zero-test-key", "zero-test-secret"
SECRET_ENV = "ZERO_TEST_S3_SECRET"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class S3Server:
    """A moto S3 server on a fixed loopback port, so it can be stopped and started again (its
    objects live in this process and survive a restart, as a real store's would)."""

    def __init__(self):
        from moto.server import ThreadedMotoServer
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server_class = ThreadedMotoServer
        self._server = None
        self.client = boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                                   aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET)

    def start(self) -> None:
        self._server = self._server_class(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def bucket(self) -> str:
        name = f"zero-{uuid.uuid4().hex[:12]}"
        self.client.create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str) -> dict[str, bytes]:
        found = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                found[item["Key"]] = self.client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        return found

    def remote(self, name: str, bucket: str, **extra) -> dict:
        return {"name": name, "type": "s3", "bucket": bucket, "endpoint": self.endpoint, "region": REGION,
                "pathStyle": True, "accessKeyId": KEY_ID, "secretAccessKeyEnv": SECRET_ENV, **extra}
