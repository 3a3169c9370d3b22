"""A remote in a Backblaze B2 bucket, through b2sdk's v2 API.

An object is the file ``<prefix><key>`` in the bucket. Uploads go through
b2sdk's planner, which switches to B2's large-file API (parts uploaded
separately) once an object is bigger than ``large_file_part_bytes``.
B2 keeps versions: delete removes every version of the name, so nothing is
left to pay for. b2sdk's own per-request retries are cut to one try, so
zero's retry wrapper (zero/remote/retry.py) is the only budget.

The account is authorized on first use, not in the constructor. Tests pass
an ``api`` built on b2sdk's RawSimulator.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from typing import Any

from b2sdk.v2 import B2Api, B2HttpApiConfig, B2Session, InMemoryAccountInfo, UploadSourceBytes, WriteIntent
from b2sdk.v2 import exception as b2_errors
from b2sdk._internal.b2http import B2Http

from zero.errors import AuthFailed, ConfigError, ObjectMissing, RemoteError, RemoteUnavailable
from zero.remote.base import Option, Remote, check_key, key_prefix, text

_MIB = 1024 * 1024
_MILLISECONDS_PER_SECOND = 1000.0


class _OneTryB2Http(B2Http):
    """B2Http without its own retries and sleeps: retrying is RetryingRemote's job."""

    @classmethod
    def _translate_and_retry(cls, fcn, try_count, post_params=None):
        return super()._translate_and_retry(fcn, 1, post_params)


class _OneTrySession(B2Session):
    B2HTTP_CLASS = staticmethod(_OneTryB2Http)


class _OneTryB2Api(B2Api):
    SESSION_CLASS = staticmethod(_OneTrySession)


class B2Remote(Remote):
    kind = "b2"
    options = (
        Option("accountId", "account_id", required=True, aliases=("applicationKeyId",),
               help="the application key's id (keyID), or the account id for the master key"),
        Option("applicationKey", "application_key", required=True, secret=True,
               help="the application key; better given as applicationKeyEnv or applicationKeyFile"),
        Option("bucketId", "bucket_id", help="the bucket's id (give this or bucket)"),
        Option("bucket", "bucket", help="the bucket's name (give this or bucketId)"),
        Option("prefix", "prefix", parse=key_prefix, help="a folder inside the bucket to keep zero's keys in"),
    )
    realm = "production"
    large_file_part_bytes = 64 * _MIB  # objects bigger than this go up in parts of about this size
    page_size = 1000                   # names per list request

    @classmethod
    def check_options(cls, values: dict[str, Any], where: str) -> None:
        if ("bucketId" in values) == ("bucket" in values):
            raise ConfigError(f"{where + '.' if where else ''}bucketId: a b2 remote needs the bucket's id (bucketId) "
                              "or its name (bucket), and only one of the two")

    def __init__(self, name: str, account_id: str, application_key: str, bucket_id: str | None = None,
                 bucket: str | None = None, prefix: str = "", api: B2Api | None = None):
        self.name = name
        self.prefix = prefix
        self._account_id = account_id
        self._application_key = application_key
        self._bucket_id = bucket_id
        self._bucket_name = bucket
        self._api = api or _OneTryB2Api(InMemoryAccountInfo(), api_config=B2HttpApiConfig())
        self._bucket = None
        self._connect_lock = threading.Lock()

    # -- the protocol ---------------------------------------------------------------------

    def put(self, key: str, data: bytes) -> None:
        name = self._name_of(key)
        with self._translated("store", key):
            # create_file, not upload_bytes, because only it takes the part size
            # that decides when the planner switches to the large-file API.
            self._connected().create_file([WriteIntent(UploadSourceBytes(data))], name,
                                          recommended_upload_part_size=self.large_file_part_bytes)

    def get(self, key: str) -> bytes:
        name = self._name_of(key)
        with self._translated("read", key):
            buffer = io.BytesIO()
            self._connected().download_file_by_name(name).save(buffer)
            return buffer.getvalue()

    def head(self, key: str) -> int | None:
        name = self._name_of(key)
        try:
            with self._translated("look up", key):
                return int(self._connected().get_file_info_by_name(name).size)
        except ObjectMissing:
            return None

    def delete(self, key: str) -> None:
        name = self._name_of(key)
        with self._translated("delete", key):
            bucket = self._connected()
            # Every version of the name: B2 keeps old versions (and bills them) until deleted.
            for version in list(bucket.list_file_versions(name)):
                if version.file_name != name:
                    continue
                try:
                    self._api.delete_file_version(version.id_, version.file_name)
                except b2_errors.FileNotPresent:
                    continue  # deleted meanwhile by another collector: fine

    def list(self, prefix: str = "") -> Iterator[tuple[str, int, float]]:
        # b2_list_file_names with an exact prefix: Bucket.ls lists folders, so a
        # partial last component ("fs1/objects/a") would not match.
        full_prefix = self.prefix + prefix
        with self._translated("list", prefix or "(everything)"):
            bucket = self._connected()
            start: str | None = full_prefix or None  # names sort, so the first match is at the prefix
            while True:
                page = self._api.session.list_file_names(bucket.id_, start, self.page_size, full_prefix or None)
                for entry in page["files"]:
                    if entry["action"] != "upload":
                        continue  # a hide marker or an unfinished large file is not an object
                    yield (entry["fileName"][len(self.prefix):], int(entry["contentLength"]),
                           entry["uploadTimestamp"] / _MILLISECONDS_PER_SECOND)
                start = page.get("nextFileName")
                if start is None:
                    return

    def is_transient(self, error: BaseException) -> bool:
        if isinstance(error, b2_errors.B2Error):
            error = self.translate(error, "reach", "")
        return super().is_transient(error)

    # -- the border -----------------------------------------------------------------------

    def translate(self, error: BaseException, verb: str, key: str) -> RemoteError:
        """zero's error for a b2sdk error, judged by its class."""
        where = f"remote {self.name!r} (b2 bucket {self._bucket_name or self._bucket_id})"
        if isinstance(error, b2_errors.NonExistentBucket | b2_errors.BucketIdNotFound):
            return RemoteUnavailable(f"{where}: the bucket does not exist or this key cannot see it; "
                                     "create it, or fix bucketId/bucket in the config", transient=False)
        if isinstance(error, b2_errors.FileNotPresent):
            return ObjectMissing(f"{where} has no object {key}")
        if isinstance(error, b2_errors.Unauthorized | b2_errors.AccessDenied | b2_errors.NotAllowedByAppKeyError):
            return AuthFailed(f"{where} refused zero's credentials when asked to {verb} {key} "
                              f"({type(error).__name__}); check accountId/applicationKey and the key's "
                              "capabilities on this bucket")
        if isinstance(error, b2_errors.CapExceeded):
            return RemoteUnavailable(f"{where}: could not {verb} {key}: the account's cap is reached "
                                     f"({type(error).__name__}); raise it in Backblaze's settings", transient=False)
        if isinstance(error, b2_errors.B2Error) and error.should_retry_http():
            # B2ConnectionError, B2RequestTimeout, ServiceError (5xx), TooManyRequests, …
            return RemoteUnavailable(f"{where}: could not {verb} {key}: cannot reach the service or it is busy "
                                     f"({type(error).__name__}); zero tries again")
        return RemoteUnavailable(f"{where}: could not {verb} {key}: {type(error).__name__}: {error}",
                                 transient=False)

    def _translated(self, verb: str, key: str):
        return _Translating(self, verb, key)

    def _connected(self):
        """The bucket, authorizing the account on first use."""
        with self._connect_lock:
            if self._bucket is None:
                self._api.authorize_account(self.realm, self._account_id, self._application_key)
                if self._bucket_name:
                    self._bucket = self._api.get_bucket_by_name(self._bucket_name)
                else:
                    self._bucket = self._api.get_bucket_by_id(self._bucket_id)
                    self._bucket_name = self._bucket.name
            return self._bucket

    def _name_of(self, key: str) -> str:
        check_key(key)
        return self.prefix + key

    def __repr__(self) -> str:
        return f"<B2Remote {self.name!r} b2://{self._bucket_name or self._bucket_id}/{self.prefix}>"


class _Translating:
    """``with``: b2sdk's errors leave as zero's, the original chained."""

    def __init__(self, remote: B2Remote, verb: str, key: str):
        self.remote, self.verb, self.key = remote, verb, key

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if isinstance(error, b2_errors.B2Error):
            raise self.remote.translate(error, self.verb, self.key) from error
        return False
