"""Object storage with one interface for ``s3://`` (boto3) and ``file://`` folders.

A ``Storage`` is rooted at a folder URI; keys are relative to it (``shards/gen-00012.tar``) and use '/'.

Write-then-commit: a data object counts as written only once its commit marker (a small JSON object,
written last) exists. ``commit_file`` does both steps and refuses to touch data committed by another spec
(``StorageConflict``). Single objects are never visible half-written: ``file://`` writes a temporary file
in the same folder, fsyncs it and renames it into place; an S3 PUT or multipart upload only becomes
visible when it completes, so no temporary key and server-side copy is needed there.

S3 resilience has two layers: botocore's own retries in ``adaptive`` mode (client-side rate limiting on
throttling) inside each HTTP call, and a bounded retry with jittered exponential backoff around each whole
operation (a multipart transfer, a streamed read), for throttling (SlowDown, 503), 5xx, timeouts and
dropped connections. When both give up the operation raises ``TransientStorageError``.

boto3/botocore are imported only when an ``s3://`` storage is opened.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import random
import shutil
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from synthrec.storage.uris import URIError, parse_storage_uri
from synthrec.timestamps import utc_stamp

log = logging.getLogger(__name__)

T = TypeVar("T")

MiB = 1024 * 1024
CHUNK = MiB
# Temporary files of atomic writes end with this; listings skip them (a crash can leave one behind).
TMP_SUFFIX = ".synthrec-tmp"


class StorageError(Exception):
    """Object storage failed; the message names the URI and says what to do."""


class ObjectNotFound(StorageError):
    """The object does not exist."""


class StoragePermissionError(StorageError):
    """Credentials or permissions do not allow the operation."""


class TransientStorageError(StorageError):
    """A retryable failure (throttling, 5xx, timeouts) persisted after all retries."""


class StorageConflict(StorageError):
    """The key is already committed by a different spec; nothing was overwritten."""


class InvalidKey(StorageError, ValueError):
    """A key that could escape the storage root or cannot be represented on every backend."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the storage root
    size: int
    etag: str | None = None  # S3 ETag without quotes; None on file://


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
            raise StorageError(
                f"bad retry setting in the environment ({e}); SYNTHREC_S3_ATTEMPTS and AWS_MAX_ATTEMPTS are "
                "integers, SYNTHREC_S3_BACKOFF_S is seconds"
            ) from e
        if policy.attempts < 1 or policy.botocore_attempts < 1 or policy.base_delay < 0:
            raise StorageError(f"bad retry setting in the environment: {policy}; attempts must be >= 1")
        if policy.botocore_mode not in ("adaptive", "standard", "legacy"):
            raise StorageError(f"AWS_RETRY_MODE={policy.botocore_mode!r}: use adaptive, standard or legacy")
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


# ---------------------------------------------------------------------------------------------- keys


def clean_key(key: str, *, folder: bool = False) -> str:
    """Validate a key relative to a storage root. With ``folder`` ('' and a trailing '/' are allowed).

    Rejected: absolute keys, '..' or '.' or empty segments, backslashes, NUL and other control characters.
    """
    if not isinstance(key, str):
        raise InvalidKey(f"storage keys are strings, got {type(key).__name__}")
    if folder:
        if key == "":
            return ""
        body = key[:-1] if key.endswith("/") else key
    else:
        body = key
    problem = None
    if not body:
        problem = "it is empty" if not folder else "it is only '/'"
    elif body.startswith("/"):
        problem = "it is absolute; keys are relative to the storage root"
    elif "\\" in body:
        problem = "it contains a backslash; use '/' between folders"
    elif any(ord(c) < 32 or c == "\x7f" for c in body):
        problem = "it contains a control character (NUL, newline, ...)"
    elif body.endswith("/") or "//" in body:
        problem = "it has an empty path segment ('//' or a trailing '/')"
    elif any(part in ("..", ".") for part in body.split("/")):
        problem = "it has a '.' or '..' segment"
    if problem:
        raise InvalidKey(f"invalid storage key {key!r}: {problem}")
    return body + "/" if folder else body


def _missing(target: str) -> str:
    return f"{target} does not exist; check the URI, or run the step that writes it first"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a local file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _umask() -> int:
    with suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Write a local file atomically: a temp file in the same folder, fsync, then ``os.replace``.

    If the block raises (or the process dies) the final path keeps its previous content or stays absent.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:100]}.", suffix=TMP_SUFFIX)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; make it a normal file
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


@contextmanager
def exclusive_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive advisory lock (flock) on the local file ``path``, across processes."""
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename durable; not every filesystem allows opening a directory, so best effort.
    with suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ------------------------------------------------------------------------------------------ interface


class Storage(ABC):
    """A folder of objects. ``uri`` is the root URI, always with a trailing '/'."""

    uri: str

    def url(self, key: str) -> str:
        return self.uri + clean_key(key)

    @abstractmethod
    def child(self, prefix: str) -> Storage:
        """The storage rooted at ``prefix`` (a folder below this root)."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def read_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def upload_file(self, local_path: str | os.PathLike[str], key: str) -> None: ...

    @abstractmethod
    def download_file(self, key: str, local_path: str | os.PathLike[str]) -> None:
        """Copy an object to a local file, atomically (the local path never holds a partial file)."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """All objects whose key starts with ``prefix`` (recursively), sorted by key."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete an object; a missing object is not an error."""

    @abstractmethod
    def sha256(self, key: str) -> str:
        """Hex sha256 of an object's content, streamed."""

    def read_json(self, key: str) -> Any:
        data = self.read_bytes(key)
        try:
            return json.loads(data)
        except ValueError as e:
            raise StorageError(
                f"{self.url(key)} is not valid JSON ({e}); it was not written by synthrec or is damaged: "
                "delete it and re-run the step that writes it"
            ) from e

    def write_json(self, key: str, obj: Any) -> None:
        """Write JSON with sorted keys, so the same object always gives the same bytes."""
        self.write_bytes(key, (json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


def open_storage(
    uri: str,
    *,
    endpoint: str | None = None,
    region: str | None = None,
    retry: RetryPolicy | None = None,
    tuning: S3Tuning | None = None,
) -> Storage:
    """Open the folder ``s3://bucket/prefix/`` or ``file:///abs/path/``.

    S3: ``endpoint`` defaults to ``$AWS_ENDPOINT_URL_S3`` or ``$AWS_ENDPOINT_URL`` (MinIO, Ceph, ...; a
    custom endpoint switches to path-style addressing); credentials and region come from the standard
    AWS chain (environment, profile, instance/IRSA role).
    """
    try:
        parsed = parse_storage_uri(uri)
    except URIError as e:
        raise StorageError(str(e)) from e
    if parsed.scheme == "file":
        return FileStorage(Path(parsed.path))
    if parsed.scheme == "tiny":  # the built-in demo data, built offline on first use
        from synthrec.tiny import ensure_tiny_models

        return FileStorage(ensure_tiny_models().root / parsed.path)
    return S3Storage.connect(
        parsed.bucket, parsed.path, endpoint=endpoint, region=region, retry=retry, tuning=tuning
    )


# ------------------------------------------------------------------------------------------- file://


class FileStorage(Storage):
    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.abspath(root))
        self.uri = "file://" + str(self.root).rstrip("/") + "/"

    def _path(self, key: str) -> Path:
        return self.root / clean_key(key)

    @contextmanager
    def _errors(self, key: str, action: str) -> Iterator[None]:
        target = self.uri + key  # the caller has validated key
        try:
            yield
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, FileExistsError) as e:
            if action in ("read", "download", "hash"):
                raise ObjectNotFound(_missing(target)) from e
            raise StorageError(
                f"cannot {action} {target}: {e.strerror} ({e.filename}); on file:// a key cannot be both an "
                "object and a folder, and the folders on the way must be creatable"
            ) from e
        except PermissionError as e:
            raise StoragePermissionError(
                f"cannot {action} {target}: permission denied ({e.filename}); check the owner and mode of "
                "the folder, or whether the volume is mounted read-only"
            ) from e
        except OSError as e:
            if e.errno == errno.EROFS:
                raise StoragePermissionError(
                    f"cannot {action} {target}: read-only file system; mount the volume read-write"
                ) from e
            if e.errno == errno.ENOSPC:
                raise StorageError(f"cannot {action} {target}: no space left on the device") from e
            raise StorageError(f"cannot {action} {target}: {e}") from e

    def child(self, prefix: str) -> FileStorage:
        return FileStorage(self.root / clean_key(prefix, folder=True))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def read_bytes(self, key: str) -> bytes:
        path = self._path(key)
        with self._errors(key, "read"):
            return path.read_bytes()

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        with self._errors(key, "write"), atomic_output(path) as f:
            f.write(data)

    def upload_file(self, local_path: str | os.PathLike[str], key: str) -> None:
        path = self._path(key)
        _require_local_file(local_path, self.url(key))
        with self._errors(key, "write"), open(local_path, "rb") as src, atomic_output(path) as dst:
            shutil.copyfileobj(src, dst, CHUNK)

    def download_file(self, key: str, local_path: str | os.PathLike[str]) -> None:
        path = self._path(key)
        with self._errors(key, "download"), open(path, "rb") as src, atomic_output(local_path) as dst:
            shutil.copyfileobj(src, dst, CHUNK)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        prefix = clean_key(prefix, folder=True) if prefix.endswith("/") or not prefix else clean_key(prefix)
        start = self.root / prefix.rpartition("/")[0]
        found: list[ObjectInfo] = []
        with self._errors(prefix, "list"):
            for folder, _dirs, files in os.walk(start):
                rel = Path(folder).relative_to(self.root).as_posix()
                for name in files:
                    key = name if rel == "." else f"{rel}/{name}"
                    if key.startswith(prefix) and not name.endswith(TMP_SUFFIX):
                        with suppress(FileNotFoundError):  # deleted while listing
                            found.append(ObjectInfo(key, os.stat(os.path.join(folder, name)).st_size))
        yield from sorted(found, key=lambda info: info.key)

    def delete(self, key: str) -> None:
        path = self._path(key)
        with self._errors(key, "delete"), suppress(FileNotFoundError):
            path.unlink()

    def sha256(self, key: str) -> str:
        path = self._path(key)
        with self._errors(key, "hash"):
            return sha256_file(path)


def _require_local_file(local_path: str | os.PathLike[str], target: str) -> None:
    if not os.path.isfile(local_path):
        raise StorageError(f"cannot upload {local_path} to {target}: it is not a readable local file")


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
                return ObjectNotFound(_missing(target))
            if code in _DENIED:
                return StoragePermissionError(
                    f"cannot {action} {target}: access denied ({code}); check the credentials "
                    "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the pod role) and the bucket policy"
                )
            if code == "NoSuchBucket":
                return StorageError(
                    f"cannot {action} {target}: bucket {self.bucket!r} does not exist"
                    f"{' at ' + self.endpoint if self.endpoint else ''}; create it or fix the URI"
                )
            return StorageError(f"cannot {action} {target}: {_describe(e)}")
        if isinstance(e, OSError):  # local side of a transfer
            return StorageError(f"cannot {action} {target}: {e}")
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
        _require_local_file(local_path, self.url(key))

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
            raise StorageError(f"cannot download {self.url(key)} to {local_path}: {e}") from e

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


# -------------------------------------------------------------------------------------- commit marker


_MARKER_FIELDS = ("spec_hash", "written_at", "sha256", "size")


def write_marker(storage: Storage, key: str, *, spec_hash: str, **fields: Any) -> dict[str, Any]:
    """Write the commit marker ``key`` (JSON): ``fields`` plus ``spec_hash`` and ``written_at`` (UTC)."""
    marker = {**fields, "spec_hash": spec_hash, "written_at": utc_stamp()}
    storage.write_json(key, marker)
    return marker


def read_marker(storage: Storage, key: str) -> dict[str, Any] | None:
    """The commit marker at ``key``, or None when there is none."""
    try:
        marker = storage.read_json(key)
    except ObjectNotFound:
        return None
    if not isinstance(marker, dict) or not isinstance(marker.get("spec_hash"), str):
        raise StorageError(
            f"{storage.url(key)} is not a synthrec commit marker (no spec_hash); delete it to redo that step"
        )
    return marker


def commit_file(
    storage: Storage,
    local_path: str | os.PathLike[str],
    data_key: str,
    marker_key: str,
    *,
    spec_hash: str,
    **fields: Any,
) -> dict[str, Any]:
    """Upload ``local_path`` to ``data_key``, then write ``marker_key`` with sha256, size and ``fields``.

    Idempotent: if the marker exists with the same ``spec_hash`` it is returned and nothing is written.
    If it exists with another spec hash, ``StorageConflict`` is raised and nothing is touched. The data
    object itself is never partially visible (see the module docstring), so a crash between the two steps
    leaves uncommitted data that the next run simply overwrites.
    """
    reserved = sorted(set(fields) & set(_MARKER_FIELDS))
    if reserved:
        raise ValueError(f"commit_file computes {', '.join(reserved)} itself; do not pass them as fields")
    existing = read_marker(storage, marker_key)
    if existing is not None:
        if existing["spec_hash"] != spec_hash:
            raise StorageConflict(
                f"{storage.url(data_key)} is already committed by spec hash {existing['spec_hash']} "
                f"(marker {storage.url(marker_key)}), not by this spec ({spec_hash}); nothing was "
                "overwritten. Use a new output URI for a changed spec, or delete the old output to redo it"
            )
        return existing
    size = os.path.getsize(local_path)
    digest = sha256_file(local_path)
    storage.upload_file(local_path, data_key)
    return write_marker(storage, marker_key, spec_hash=spec_hash, sha256=digest, size=size, **fields)


def upload_tree(storage: Storage, local_dir: str | os.PathLike[str], prefix: str = "") -> list[ObjectInfo]:
    """Upload every file under ``local_dir`` to ``prefix`` (keys mirror relative paths), sorted by key."""
    root = Path(local_dir)
    if not root.is_dir():
        raise StorageError(f"cannot upload {root} to {storage.uri}: it is not a local folder")
    base = clean_key(prefix, folder=True)
    uploaded = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        key = base + path.relative_to(root).as_posix()
        storage.upload_file(path, key)
        uploaded.append(ObjectInfo(key, path.stat().st_size))
    return uploaded
