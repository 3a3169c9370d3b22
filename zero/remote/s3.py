"""A remote in an S3 bucket (AWS, or any S3-compatible store: MinIO, Wasabi, R2, Ceph, …).

An object is ``<prefix><key>`` in the bucket. Credentials come from the
config (``accessKeyId`` + ``secretAccessKey``), a named ``profile`` of the
standard AWS files, or else boto3's default chain (environment variables,
~/.aws, instance roles). botocore does not retry here: zero's retry wrapper
(zero/remote/retry.py) does, driven by ``is_transient``.

botocore's errors are translated at this border, by error class and by the
S3 error code or HTTP status, never by message text.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from zero.errors import AuthFailed, ConfigError, ObjectMissing, RemoteError, RemoteUnavailable
from zero.remote.base import Option, Remote, boolean, check_key, key_prefix, text, url

_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_AUTH_CODES = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                         "ExpiredToken", "TokenRefreshRequired", "AccountProblem", "AllAccessDisabled", "403"})
_TRANSIENT_CODES = frozenset({"SlowDown", "RequestTimeout", "Throttling", "ThrottlingException", "InternalError",
                              "ServiceUnavailable", "RequestLimitExceeded", "503", "500"})
_TOO_MANY_REQUESTS = 429


class S3Remote(Remote):
    kind = "s3"
    options = (
        Option("bucket", "bucket", required=True, help="the bucket's name; zero never creates it"),
        Option("endpoint", "endpoint", parse=url,
               help="the service's address, for S3-compatible stores (e.g. https://s3.eu-central-1.wasabisys.com); "
                    "AWS when left out"),
        Option("region", "region", help="the bucket's region, e.g. eu-west-1 (from the profile or environment "
                                        "when left out)"),
        Option("prefix", "prefix", parse=key_prefix, help="a folder inside the bucket to keep zero's keys in"),
        Option("pathStyle", "path_style", parse=boolean,
               help="address the bucket as <endpoint>/<bucket> rather than <bucket>.<endpoint>; "
                    "many self-hosted stores need true"),
        Option("accessKeyId", "access_key_id", help="the access key's id (with secretAccessKey)"),
        Option("secretAccessKey", "secret_access_key", secret=True,
               help="the access key's secret; better given as secretAccessKeyEnv or secretAccessKeyFile"),
        Option("profile", "profile", help="a profile of ~/.aws/credentials and ~/.aws/config"),
    )
    connect_timeout_s = 10.0
    read_timeout_s = 60.0
    max_connections = 16   # the worker uploads and fetches on several threads
    page_size = 1000       # keys per list request; S3's own maximum

    @classmethod
    def check_options(cls, values: dict[str, Any], where: str) -> None:
        has_id, has_secret = "accessKeyId" in values, "secretAccessKey" in values
        if has_id != has_secret:
            missing = "secretAccessKey" if has_id else "accessKeyId"
            raise ConfigError(f"{where}.{missing}: accessKeyId and secretAccessKey go together; "
                              "give both, or neither to use a profile or the environment")
        if has_id and "profile" in values:
            raise ConfigError(f"{where}.profile: give either a profile or accessKeyId/secretAccessKey, not both")

    def __init__(self, name: str, bucket: str, endpoint: str | None = None, region: str | None = None,
                 prefix: str = "", path_style: bool = False, access_key_id: str | None = None,
                 secret_access_key: str | None = None, profile: str | None = None):
        self.name = name
        self.bucket = bucket
        self.endpoint = endpoint
        self.prefix = prefix
        try:
            session = boto3.session.Session(aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key,
                                            region_name=region, profile_name=profile)
        except botocore.exceptions.ProfileNotFound:
            raise ConfigError(f"remote {name!r}: profile {profile!r} is not in ~/.aws/credentials or "
                              "~/.aws/config; add it or fix 'profile'") from None
        config = botocore.config.Config(
            retries={"total_max_attempts": 1},
            connect_timeout=self.connect_timeout_s,
            read_timeout=self.read_timeout_s,
            max_pool_connections=self.max_connections,
            s3={"addressing_style": "path" if path_style else "auto"},
        )
        # Making a client reads the configuration only; nothing is sent yet.
        self._client = session.client("s3", endpoint_url=endpoint, config=config)

    def put(self, key: str, data: bytes) -> None:
        name = self._name_of(key)
        try:
            self._client.put_object(Bucket=self.bucket, Key=name, Body=data)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            raise self.translate(error, "store", key) from error

    def get(self, key: str) -> bytes:
        name = self._name_of(key)
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=name)
            body = response["Body"]  # botocore's StreamingBody: its read() turns a cut stream into its own error
            try:
                return body.read()
            finally:
                body.close()
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            raise self.translate(error, "read", key) from error

    def head(self, key: str) -> int | None:
        name = self._name_of(key)
        try:
            response = self._client.head_object(Bucket=self.bucket, Key=name)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            translated = self.translate(error, "look up", key)
            if isinstance(translated, ObjectMissing):
                return None
            raise translated from error
        return int(response["ContentLength"])

    def delete(self, key: str) -> None:
        # S3 answers 204 for a key it does not hold, so a repeated delete is fine.
        name = self._name_of(key)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=name)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            translated = self.translate(error, "delete", key)
            if not isinstance(translated, ObjectMissing):
                raise translated from error

    def list(self, prefix: str = "") -> Iterator[tuple[str, int, float]]:
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix,
                                   PaginationConfig={"PageSize": self.page_size})
        try:
            for page in pages:
                for entry in page.get("Contents", ()):
                    key = entry["Key"][len(self.prefix):]
                    yield key, int(entry["Size"]), entry["LastModified"].timestamp()
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            raise self.translate(error, "list", prefix or "(everything)") from error

    def is_transient(self, error: BaseException) -> bool:
        if isinstance(error, (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)):
            error = self.translate(error, "reach", "")
        return super().is_transient(error)

    def translate(self, error: Exception, verb: str, key: str) -> RemoteError:
        """zero's error for a botocore error, judged by class, S3 error code and HTTP status."""
        where = f"remote {self.name!r} (s3 bucket {self.bucket}{' at ' + self.endpoint if self.endpoint else ''})"
        if isinstance(error, botocore.exceptions.ClientError):
            code = str(error.response.get("Error", {}).get("Code", ""))
            status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if code == "NoSuchBucket":
                return RemoteUnavailable(f"{where}: the bucket does not exist; create it, or fix 'bucket' "
                                         "(and 'endpoint'/'region') in the config", transient=False)
            if code in _MISSING_CODES or status == 404:
                return ObjectMissing(f"{where} has no object {key}")
            if code in _AUTH_CODES or status in (401, 403):
                return AuthFailed(f"{where} refused zero's credentials when asked to {verb} {key} ({code or status}); "
                                  "check accessKeyId/secretAccessKey or the profile, and the key's permissions "
                                  "on this bucket")
            if code in _TRANSIENT_CODES or status >= 500 or status == _TOO_MANY_REQUESTS:
                return RemoteUnavailable(f"{where}: could not {verb} {key}: the service is busy or failing "
                                         f"({code or status}); zero tries again")
            return RemoteUnavailable(f"{where}: could not {verb} {key}: the service answered {code or status}",
                                     transient=False)
        if isinstance(error, (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError)):
            return AuthFailed(f"{where}: no usable credentials were found; give accessKeyId and secretAccessKey "
                              "(or …Env/…File), a profile, or set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
        if isinstance(error, botocore.exceptions.SSLError):
            return RemoteUnavailable(f"{where}: the TLS connection failed ({error}); check the endpoint's "
                                     "certificate and address", transient=False)
        if isinstance(error, (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError)):
            # Refused or dropped connections, timeouts, a body cut short: the network, not the request.
            return RemoteUnavailable(f"{where}: could not {verb} {key}: cannot reach the service "
                                     f"({type(error).__name__}); check the network and the endpoint")
        return RemoteUnavailable(f"{where}: could not {verb} {key}: {type(error).__name__}: {error}",
                                 transient=False)

    def _name_of(self, key: str) -> str:
        check_key(key)
        return self.prefix + key

    def __repr__(self) -> str:
        return f"<S3Remote {self.name!r} s3://{self.bucket}/{self.prefix}>"
