"""``s3://`` storage (boto3), with two layers of retries.

botocore's own retries in ``adaptive`` mode (client-side rate limiting on throttling) run inside each HTTP
call; a bounded retry with jittered exponential backoff runs around each whole operation (a multipart
transfer, a streamed read), for throttling (SlowDown, 503), 5xx, timeouts and dropped connections. When
both give up the operation raises ``TransientStorageError``. An S3 PUT or multipart upload only becomes
visible when it completes, so no temporary key is needed. boto3/botocore are imported only when an
``s3://`` storage is opened.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from synthrec.storage.base import CHUNK, MiB, ObjectInfo, Storage, clean_key, missing_message
from synthrec.storage.errors import (
    ObjectNotFound,
    StorageConfigError,
    StorageError,
    StoragePermissionError,
    TransientStorageError,
    local_error,
)
from synthrec.storage.files import atomic_output, require_local_file

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Retries around each S3 operation, on top of botocore's retries inside each HTTP call.

    ``from_env()`` (the default) reads SYNTHREC_S3_ATTEMPTS and SYNTHREC_S3_BACKOFF_S for our layer and
    botocore's own AWS_RETRY_MODE and AWS_MAX_ATTEMPTS for its layer. In ``adaptive`` mode botocore also
    rate-limits the client after a throttling answer (down to 0.5 requests/s), which is what a busy
    S3 wants and is slow on purpose.
    """

    attempts: int = 4
    base_delay: float = 0.5  # seconds; the wait before retry n is uniform(0, min(max_delay, base * 2**n))
    max_delay: float = 10.0
    botocore_mode: str = "adaptive"
    botocore_attempts: int = 3

    def delay(self, retry: int) -> float:
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**retry))

    @classmethod
    def from_env(cls) -> RetryPolicy:
        env = os.environ
        try:
            policy = cls(
                attempts=int(env.get("SYNTHREC_S3_ATTEMPTS", cls.attempts)),
                base_delay=float(env.get("SYNTHREC_S3_BACKOFF_S", cls.base_delay)),
                botocore_mode=env.get("AWS_RETRY_MODE", cls.botocore_mode),
                botocore_attempts=int(env.get("AWS_MAX_ATTEMPTS", cls.botocore_attempts)),
            )
        except ValueError as e:
            raise StorageConfigError(
                f"bad retry setting in the environment ({e}); SYNTHREC_S3_ATTEMPTS and AWS_MAX_ATTEMPTS are "
                "integers, SYNTHREC_S3_BACKOFF_S is seconds"
            ) from e
        if policy.attempts < 1 or policy.botocore_attempts < 1 or policy.base_delay < 0:
            raise StorageConfigError(f"bad retry setting in the environment: {policy}; attempts must be >= 1")
        if policy.botocore_mode not in ("adaptive", "standard", "legacy"):
            raise StorageConfigError(
                f"AWS_RETRY_MODE={policy.botocore_mode!r}: use adaptive, standard or legacy"
            )
        return policy


@dataclass(frozen=True)
class S3Tuning:
    """Transfer settings; multipart kicks in at ``multipart_threshold`` (S3's minimum part is 5 MiB)."""

    multipart_threshold: int = 16 * MiB
    multipart_chunksize: int = 16 * MiB
    max_concurrency: int = 8
    page_size: int = 1000  # keys per LIST request (S3's maximum is 1000)
    connect_timeout: float = 10.0
    read_timeout: float = 60.0


# --------------------------------------------------------------------------------------------- s3://

_LOADER: Any = None
_LOADER_LOCK = threading.Lock()


def _botocore_session() -> Any:
    """A fresh session (credentials and env are read anew) sharing one loader of service models.

    Loading the S3 model is most of the ~0.2 s a new client costs; with the shared loader it is ~30 ms.
    """
    global _LOADER
    import botocore.session
    from botocore.loaders import create_loader

    with _LOADER_LOCK:
        if _LOADER is None:
            _LOADER = create_loader()
    session = botocore.session.Session()
    session.register_component("data_loader", _LOADER)
    return session


_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_DENIED = {
    "AccessDenied",
    "403",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AllAccessDisabled",
    "ExpiredToken",
    "InvalidToken",
    "AccountProblem",
}
_TRANSIENT = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "TooManyRequests",
    "RequestLimitExceeded",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "ServiceUnavailable",
    "BandwidthLimitExceeded",
}


class S3Storage(Storage):
    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str,
        *,
        endpoint: str | None,
        retry: RetryPolicy,
        tuning: S3Tuning,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = clean_key(prefix, folder=True)
        self.endpoint = endpoint
        self.retry = retry
        self.tuning = tuning
        self.uri = f"s3://{bucket}/{self.prefix}"

    @classmethod
    def connect(
        cls,
        bucket: str,
        prefix: str,
        *,
        endpoint: str | None = None,
        region: str | None = None,
        retry: RetryPolicy | None = None,
        tuning: S3Tuning | None = None,
    ) -> S3Storage:
        from botocore.config import Config

        retry = retry or RetryPolicy.from_env()
        tuning = tuning or S3Tuning()
        env = os.environ
        endpoint = endpoint or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        options: dict[str, Any] = {
            "retries": {"mode": retry.botocore_mode, "total_max_attempts": retry.botocore_attempts},
            "connect_timeout": tuning.connect_timeout,
            "read_timeout": tuning.read_timeout,
            "max_pool_connections": max(10, 2 * tuning.max_concurrency),
        }
        if endpoint:
            # MinIO/Ceph: buckets are paths, and many do not accept the CRC trailers that botocore
            # sends by default since 1.36; the AWS_* env variables still win if set.
            options["s3"] = {"addressing_style": "path"}
            if "AWS_REQUEST_CHECKSUM_CALCULATION" not in os.environ:
                options["request_checksum_calculation"] = "when_required"
            if "AWS_RESPONSE_CHECKSUM_VALIDATION" not in os.environ:
                options["response_checksum_validation"] = "when_required"
        client = _botocore_session().create_client(
            "s3", endpoint_url=endpoint, region_name=region, config=Config(**options)
        )
        return cls(client, bucket, prefix, endpoint=endpoint, retry=retry, tuning=tuning)

    def child(self, prefix: str) -> S3Storage:
        return S3Storage(
            self.client,
            self.bucket,
            self.prefix + clean_key(prefix, folder=True),
            endpoint=self.endpoint,
            retry=self.retry,
            tuning=self.tuning,
        )

    def _key(self, key: str) -> str:
        return self.prefix + clean_key(key)

    # -- error handling

    def _call(self, action: str, key: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` with bounded, jittered retries on transient failures; translate errors."""
        target = self.uri + key  # the caller has validated key
        for attempt in range(1, self.retry.attempts + 1):
            try:
                return fn()
            except Exception as e:
                if not _is_transient(e):
                    raise self._translate(e, action, target) from e
                if attempt == self.retry.attempts:
                    where = f" at {self.endpoint}" if self.endpoint else ""
                    raise TransientStorageError(
                        f"cannot {action} {target}: still failing after {attempt} attempts "
                        f"(each with up to {self.retry.botocore_attempts} tries): {_describe(e)}. "
                        f"The S3 service{where} is throttling, overloaded or unreachable; retry later, "
                        "check the endpoint and the network, or lower the parallelism"
                    ) from e
                delay = self.retry.delay(attempt - 1)
                log.warning(
                    "%s %s failed (%s); retry %d/%d in %.2fs",
                    action,
                    target,
                    _describe(e),
                    attempt,
                    self.retry.attempts - 1,
                    delay,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _translate(self, e: Exception, action: str, target: str) -> StorageError:
        from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

        if isinstance(e, StorageError):
            return e
        if isinstance(e, NoCredentialsError | PartialCredentialsError):
            return StoragePermissionError(
                f"cannot {action} {target}: no S3 credentials found ({e}); set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or a pod role)"
            )
        if isinstance(e, ClientError):
            code = _error_code(e)
            if code in _NOT_FOUND:
                return ObjectNotFound(missing_message(target))
            if code in _DENIED:
                return StoragePermissionError(
                    f"cannot {action} {target}: access denied ({code}); check the credentials "
                    "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the pod role) and the bucket policy"
                )
            if code == "NoSuchBucket":
                return StorageConfigError(
                    f"cannot {action} {target}: bucket {self.bucket!r} does not exist"
                    f"{' at ' + self.endpoint if self.endpoint else ''}; create it or fix the URI"
                )
            return StorageError(f"cannot {action} {target}: {_describe(e)}")
        if isinstance(e, OSError):  # local side of a transfer
            return local_error(e, f"cannot {action} {target}")
        return StorageError(f"cannot {action} {target}: {_describe(e)}")

    def _transfer_manager(self) -> Any:
        from boto3.s3.transfer import TransferConfig, create_transfer_manager

        config = TransferConfig(
            multipart_threshold=self.tuning.multipart_threshold,
            multipart_chunksize=self.tuning.multipart_chunksize,
            max_concurrency=self.tuning.max_concurrency,
            preferred_transfer_client="classic",
        )
        return create_transfer_manager(self.client, config)

    # -- operations

    def exists(self, key: str) -> bool:
        full = self._key(key)
        try:
            self._call("check", key, lambda: self.client.head_object(Bucket=self.bucket, Key=full))
        except ObjectNotFound:
            return False
        return True

    def read_bytes(self, key: str) -> bytes:
        full = self._key(key)

        def read() -> bytes:
            body = self.client.get_object(Bucket=self.bucket, Key=full)["Body"]
            with body:
                return body.read()

        return self._call("read", key, read)

    def write_bytes(self, key: str, data: bytes) -> None:
        full = self._key(key)
        if len(data) < self.tuning.multipart_threshold:
            self._call("write", key, lambda: self.client.put_object(Bucket=self.bucket, Key=full, Body=data))
            return

        def upload() -> None:
            with self._transfer_manager() as manager:
                manager.upload(io.BytesIO(data), self.bucket, full).result()

        self._call("write", key, upload)

    def upload_file(self, local_path: str | os.PathLike[str], key: str) -> None:
        full = self._key(key)
        require_local_file(local_path, self.url(key))

        def upload() -> None:
            with self._transfer_manager() as manager:
                manager.upload(os.fspath(local_path), self.bucket, full).result()

        self._call("upload", key, upload)

    def download_file(self, key: str, local_path: str | os.PathLike[str]) -> None:
        full = self._key(key)
        try:
            with atomic_output(local_path) as out:

                def download() -> None:
                    out.seek(0)
                    out.truncate()
                    with self._transfer_manager() as manager:
                        manager.download(self.bucket, full, out).result()

                self._call("download", key, download)
        except OSError as e:
            raise local_error(e, f"cannot download {self.url(key)} to {local_path}") from e

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        prefix = clean_key(prefix, folder=True) if prefix.endswith("/") or not prefix else clean_key(prefix)
        request = {"Bucket": self.bucket, "Prefix": self.prefix + prefix, "MaxKeys": self.tuning.page_size}
        while True:
            page = self._call("list", prefix, lambda req=dict(request): self.client.list_objects_v2(**req))
            for item in page.get("Contents", []):
                key = item["Key"][len(self.prefix) :]
                if key and not key.endswith("/"):  # "folder" placeholder objects are not data
                    yield ObjectInfo(key, int(item["Size"]), item.get("ETag", "").strip('"') or None)
            if not page.get("IsTruncated"):
                return
            request["ContinuationToken"] = page["NextContinuationToken"]

    def delete(self, key: str) -> None:
        full = self._key(key)
        self._call("delete", key, lambda: self.client.delete_object(Bucket=self.bucket, Key=full))

    def sha256(self, key: str) -> str:
        full = self._key(key)

        def digest() -> str:
            h = hashlib.sha256()
            body = self.client.get_object(Bucket=self.bucket, Key=full)["Body"]
            with body:
                for chunk in body.iter_chunks(CHUNK):
                    h.update(chunk)
            return h.hexdigest()

        return self._call("hash", key, digest)


def _error_code(e: Any) -> str:
    error = e.response.get("Error", {})
    return str(error.get("Code") or e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _is_transient(e: BaseException) -> bool:
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        HTTPClientError,
        IncompleteReadError,
        ResponseStreamingError,
    )
    from s3transfer.exceptions import RetriesExceededError

    if isinstance(e, ClientError):
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return _error_code(e) in _TRANSIENT or status >= 500 or status == 429
    if isinstance(e, ConnectionError | HTTPClientError | IncompleteReadError | ResponseStreamingError):
        return True
    if isinstance(e, RetriesExceededError):  # s3transfer gave up on a download's stream errors
        return True
    return isinstance(e, TimeoutError | ConnectionResetError | ConnectionAbortedError | BrokenPipeError)
