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
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

from synthrec.storage.base import CHUNK, MiB, ObjectInfo, Storage, clean_key, missing_message, too_large
from synthrec.storage.errors import (
    ObjectNotFound,
    StorageConfigError,
    StorageError,
    StoragePermissionError,
    TransientStorageError,
    local_error,
)
from synthrec.storage.files import atomic_output, require_local_file
from synthrec.storage.staged import PartUpload

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


_NOT_FOUND = {"NoSuchKey", "404", "NotFound", "NoSuchUpload"}
_PRECONDITION = {"PreconditionFailed", "412"}  # a conditional write found the key taken
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
    "ConditionalRequestConflict",  # 409: a concurrent conditional write to the key; AWS says retry
}
# Object metadata (x-amz-meta-...) where create_* records the sha256 of what it wrote, and where an upload
# in parts records its token (the sha256 is not known yet when the upload starts; synthrec.storage.staged).
SHA256_METADATA = "synthrec-sha256"
TOKEN_METADATA = "synthrec-token"
# Where the probe for conditional writes puts its object (below the storage's prefix), and the answer per
# endpoint and bucket, found once per process.
PROBE_PREFIX = ".synthrec-commits/probe-"
_CONDITIONAL: dict[tuple[str | None, str], bool] = {}
_CONDITIONAL_LOCK = threading.Lock()


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

    def read_bytes(self, key: str, *, max_bytes: int | None = None) -> bytes:
        full = self._key(key)

        def read() -> bytes:
            answer = self.client.get_object(Bucket=self.bucket, Key=full)
            with answer["Body"] as body:
                size = answer.get("ContentLength")
                if max_bytes is not None and isinstance(size, int) and size > max_bytes:
                    raise too_large(self.uri + key, size, max_bytes)
                data = body.read() if max_bytes is None else body.read(max_bytes + 1)
            if max_bytes is not None and len(data) > max_bytes:
                raise too_large(self.uri + key, None, max_bytes)
            return data

        return self._call("read", key, read)

    def open_stream(self, key: str) -> BinaryIO:
        return io.BufferedReader(_ObjectStream(self, clean_key(key)), buffer_size=MiB)

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

    # -- write-if-absent (If-None-Match: *) and replace-if-unchanged (If-Match: <etag>)

    @property
    def atomic_creates(self) -> bool:
        """Whether this S3 service honours ``If-None-Match: *`` and ``If-Match`` on PutObject and
        CompleteMultipartUpload, which publishes a shard streamed in parts (AWS since 2024, MinIO since
        2024, Ceph RGW, R2). Probed once per process, endpoint and bucket: a store that ignores the headers
        would let two writers both "win", so it is tested, not assumed."""
        where = (self.endpoint, self.bucket)
        with _CONDITIONAL_LOCK:
            if where not in _CONDITIONAL:
                _CONDITIONAL[where] = self._call("probe", PROBE_PREFIX, self._probe_conditional_writes)
                if not _CONDITIONAL[where]:
                    log.warning(
                        "the S3 service%s does not honour conditional writes (If-None-Match, If-Match) on "
                        "bucket %s; shard commits fall back to verify-and-repair. Upgrade the store (MinIO "
                        "from 2024 on) for single-winner commits",
                        f" at {self.endpoint}" if self.endpoint else "",
                        self.bucket,
                    )
            return _CONDITIONAL[where]

    def _probe_conditional_writes(self) -> bool:
        key = f"{self.prefix}{PROBE_PREFIX}{uuid.uuid4().hex}"
        absent, stale = {"IfNoneMatch": "*"}, {"IfMatch": '"00000000000000000000000000000000"'}
        try:
            if not self._put_if(key, b"probe", {}, absent):
                return False  # a fresh random key taken: the answer cannot be trusted
            if self._put_if(key, b"again", {}, absent) or self._put_if(key, b"again", {}, stale):
                return False  # a write that should have been refused went through: headers ignored
            upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
            try:
                part = self.client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"again"
                )
                parts = [_part(1, part)]  # both completes must be refused: the key exists, the ETag is stale
                return not self._complete_if(key, upload, parts, absent) and not self._complete_if(
                    key, upload, parts, stale
                )
            finally:
                with suppress(Exception):
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload)
        except Exception as e:
            if _is_transient(e) or _error_code_of(e) in _DENIED or _error_code_of(e) == "NoSuchBucket":
                raise  # the real write would fail the same way; it is said there
            log.info("conditional-write probe on %s failed: %s", self.uri, _describe(e))
            return False  # NotImplemented, InvalidArgument, ...: the headers are not supported
        finally:
            with suppress(Exception):
                self.client.delete_object(Bucket=self.bucket, Key=key)

    def _put_if(self, full: str, body: Any, metadata: dict[str, str], condition: dict[str, str]) -> bool:
        """PutObject under ``condition``; False when S3 refused it (412, or 404 for If-Match on a
        missing key)."""
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=full, Body=body, Metadata=metadata, **condition)
        except ClientError as e:
            if _refused(e, condition):
                return False
            raise
        return True

    def _complete_if(
        self, full: str, upload: str, parts: list[dict[str, Any]], condition: dict[str, str]
    ) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=full, UploadId=upload, MultipartUpload={"Parts": parts}, **condition
            )
        except ClientError as e:
            if _refused(e, condition):
                return False
            raise
        return True

    def create_bytes(self, key: str, data: bytes, *, sha256: str | None = None) -> bool:
        if len(data) >= self.tuning.multipart_threshold:
            with tempfile.TemporaryDirectory(prefix="synthrec-create-") as tmp:
                path = os.path.join(tmp, "object")
                with open(path, "wb") as f:
                    f.write(data)
                return self.create_file(path, key, sha256=sha256)
        full, metadata = self._key(key), _metadata(sha256)
        if not self.atomic_creates:  # check, then write: the commit protocol verifies afterwards
            if self.exists(key):
                return False
            return self._call("write", key, lambda: self._put_if(full, data, metadata, {}))
        return self._call("write", key, lambda: self._put_if(full, data, metadata, {"IfNoneMatch": "*"}))

    def create_file(self, local_path: str | os.PathLike[str], key: str, *, sha256: str | None = None) -> bool:
        require_local_file(local_path, self.url(key))
        if not self.atomic_creates:  # check, then write: the commit protocol verifies afterwards
            if self.exists(key):
                return False
            return self._write_file(local_path, key, _metadata(sha256), {})
        return self._write_file(local_path, key, _metadata(sha256), {"IfNoneMatch": "*"})

    def replace_file(
        self, local_path: str | os.PathLike[str], key: str, *, current_tag: str | None, sha256: str
    ) -> bool:
        require_local_file(local_path, self.url(key))
        condition = self._replace_condition(key, current_tag)
        if condition is None:
            return False
        return self._write_file(local_path, key, _metadata(sha256), condition)

    def _replace_condition(self, key: str, current_tag: str | None) -> dict[str, str] | None:
        """The condition that replaces ``key`` only while it holds the object tagged ``current_tag``
        (If-Match on its ETag where the store honours it); None when it holds another one already."""
        full = self._key(key)
        try:
            head = self._call("check", key, lambda: self.client.head_object(Bucket=self.bucket, Key=full))
        except ObjectNotFound:
            return None
        if _recorded_tag(head) != current_tag:
            return None
        return {"IfMatch": head["ETag"]} if self.atomic_creates else {}

    def open_upload(self, key: str) -> PartUpload:
        return _S3Upload(self, key)

    def _write_file(
        self,
        local_path: str | os.PathLike[str],
        key: str,
        metadata: dict[str, str],
        condition: dict[str, str],
    ) -> bool:
        full = self._key(key)
        size = os.path.getsize(local_path)
        if size < self.tuning.multipart_threshold:

            def put() -> bool:
                with open(local_path, "rb") as body:
                    return self._put_if(full, body, metadata, condition)

            return self._call("upload", key, put)
        return self._call(
            "upload", key, lambda: self._multipart_if(local_path, full, size, metadata, condition)
        )

    def _multipart_if(
        self,
        local_path: str | os.PathLike[str],
        full: str,
        size: int,
        metadata: dict[str, str],
        condition: dict[str, str],
    ) -> bool:
        """A multipart upload completed under ``condition`` (s3transfer cannot pass those headers): parts
        in parallel, each read from the file when sent; the upload is aborted unless it completed."""
        chunk = max(self.tuning.multipart_chunksize, -(-size // 10_000))  # S3 allows 10,000 parts
        answer = self.client.create_multipart_upload(Bucket=self.bucket, Key=full, Metadata=metadata)
        upload = answer["UploadId"]
        completed = False

        def send(number: int) -> dict[str, Any]:
            with open(local_path, "rb") as f:
                f.seek((number - 1) * chunk)
                body = f.read(chunk)
            sent = self.client.upload_part(
                Bucket=self.bucket, Key=full, UploadId=upload, PartNumber=number, Body=body
            )
            return _part(number, sent)

        try:
            with ThreadPoolExecutor(max_workers=self.tuning.max_concurrency) as pool:
                parts = list(pool.map(send, range(1, -(-size // chunk) + 1)))
            completed = self._complete_if(full, upload, parts, condition)
            return completed
        finally:
            if not completed:
                with suppress(Exception):
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload)

    def content_tag(self, key: str) -> str | None:
        full = self._key(key)
        return _recorded_tag(
            self._call("check", key, lambda: self.client.head_object(Bucket=self.bucket, Key=full))
        )

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


class _S3Upload(PartUpload):
    """A multipart upload tagged with a random token (object metadata) at CreateMultipartUpload, and
    completed under the commit protocol's condition: If-None-Match: * (create) or If-Match (replace).
    ``discard`` aborts it unless it completed: no upload and no object is left behind."""

    min_part = 5 * MiB  # S3's smallest part (but the last)

    def __init__(self, storage: S3Storage, key: str) -> None:
        self.storage, self.key, self.full = storage, clean_key(key), storage._key(key)
        self.token = f"upload-{uuid.uuid4().hex}"  # never a sha256 (64 hex digits)
        self.parts: list[dict[str, Any]] = []
        self.completed = False
        self.upload_id: str = storage._call(
            "upload",
            self.key,
            lambda: storage.client.create_multipart_upload(
                Bucket=storage.bucket, Key=self.full, Metadata={TOKEN_METADATA: self.token}
            )["UploadId"],
        )

    @property
    def tag(self) -> str:
        return self.token

    def upload_part(self, data: bytes) -> None:
        number = len(self.parts) + 1
        answer = self.storage._call(
            "upload",
            self.key,
            lambda: self.storage.client.upload_part(
                Bucket=self.storage.bucket,
                Key=self.full,
                UploadId=self.upload_id,
                PartNumber=number,
                Body=data,
            ),
        )
        self.parts.append(_part(number, answer))

    def seal(self, sha256: str, size: int) -> PartUpload:
        if not self.parts:  # an empty object: one empty part
            self.upload_part(b"")
        return super().seal(sha256, size)

    def create(self) -> bool:
        storage = self.storage
        if not storage.atomic_creates:  # check, then write: the commit protocol verifies afterwards
            if storage.exists(self.key):
                return False
            return self._complete({})
        return self._complete({"IfNoneMatch": "*"})

    def replace(self, current_tag: str | None) -> bool:
        condition = self.storage._replace_condition(self.key, current_tag)
        return condition is not None and self._complete(condition)

    def _complete(self, condition: dict[str, str]) -> bool:
        storage = self.storage
        self.completed = storage._call(
            "upload", self.key, lambda: storage._complete_if(self.full, self.upload_id, self.parts, condition)
        )
        return self.completed

    def discard(self) -> None:
        if self.completed:
            return
        storage = self.storage
        try:
            storage._call(
                "abort",
                self.key,
                lambda: storage.client.abort_multipart_upload(
                    Bucket=storage.bucket, Key=self.full, UploadId=self.upload_id
                ),
            )
        except ObjectNotFound:  # NoSuchUpload: gone already
            pass
        except StorageError as e:  # the bucket's lifecycle rule for incomplete uploads removes it later
            log.warning("could not abort the upload of %s: %s", storage.url(self.key), e)


def _part(number: int, answer: dict[str, Any]) -> dict[str, Any]:
    """A CompleteMultipartUpload part from an UploadPart answer (its checksum too: botocore >= 1.36 sends
    CRC32 checksums by default, and S3 then wants them back)."""
    part = {"PartNumber": number, "ETag": answer["ETag"]}
    part.update({k: v for k, v in answer.items() if k.startswith("Checksum") and k != "ChecksumType"})
    return part


def _metadata(sha256: str | None) -> dict[str, str]:
    return {SHA256_METADATA: sha256} if sha256 else {}


def _recorded_tag(head: dict[str, Any]) -> str | None:
    metadata = head.get("Metadata") or {}
    value = metadata.get(SHA256_METADATA) or metadata.get(TOKEN_METADATA)
    return value if isinstance(value, str) and value else None


def _refused(e: Any, condition: dict[str, str]) -> bool:
    """A conditional write refused: 412, or 404 for If-Match on a key that is gone (AWS's answer)."""
    code = _error_code(e)
    return code in _PRECONDITION or ("IfMatch" in condition and code in _NOT_FOUND)


def _error_code_of(e: BaseException) -> str:
    from botocore.exceptions import ClientError

    return _error_code(e) if isinstance(e, ClientError) else ""


class _ObjectStream(io.RawIOBase):
    """An S3 object read front to back. A connection that drops mid-object is resumed with a ranged GET
    from the last byte read (the storage's retry policy bounds the resumes), so a long shard survives a
    flaky network; each GET goes through ``_call`` (retries, errors said to the user)."""

    def __init__(self, storage: S3Storage, key: str) -> None:
        self.storage = storage
        self.key = key
        self.pos = 0
        self.body: Any = None
        self._open()

    def _open(self) -> None:
        kwargs = {"Bucket": self.storage.bucket, "Key": self.storage._key(self.key)}
        if self.pos:
            kwargs["Range"] = f"bytes={self.pos}-"
        self.body = self.storage._call(
            "read", self.key, lambda: self.storage.client.get_object(**kwargs)["Body"]
        )

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)
        attempts = self.storage.retry.attempts
        for attempt in range(1, attempts + 1):
            try:
                data = self.body.read(len(view))
                break
            except Exception as e:
                if not _is_transient(e):
                    raise self.storage._translate(e, "read", self.storage.url(self.key)) from e
                if attempt == attempts:
                    raise TransientStorageError(
                        f"reading {self.storage.url(self.key)} failed at byte {self.pos} after {attempt} "
                        f"attempts: {_describe(e)}"
                    ) from e
                log.warning(
                    "reading %s dropped at byte %d (%s); resuming", self.storage.url(self.key), self.pos, e
                )
                time.sleep(self.storage.retry.delay(attempt - 1))
                self._open()
        n = len(data)
        view[:n] = data
        self.pos += n
        return n

    def close(self) -> None:
        if self.body is not None:
            self.body.close()
        super().close()


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
        if status == 501 or _error_code(e) == "NotImplemented":  # the service lacks it: retrying won't help
            return False
        return _error_code(e) in _TRANSIENT or status >= 500 or status == 429
    if isinstance(e, ConnectionError | HTTPClientError | IncompleteReadError | ResponseStreamingError):
        return True
    if isinstance(e, RetriesExceededError):  # s3transfer gave up on a download's stream errors
        return True
    return isinstance(e, TimeoutError | ConnectionResetError | ConnectionAbortedError | BrokenPipeError)
