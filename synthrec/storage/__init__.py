"""Object storage: one interface for ``s3://`` and ``file://`` folders, and the commit protocol.

- ``base``: the ``Storage`` interface and key validation; ``errors``: what can go wrong, said to the user;
- ``files``: ``file://`` and the local file helpers; ``s3``: ``s3://`` with retries;
- ``commit``: commit markers, ``commit_file`` / ``commit_staged`` and ``existing_commit`` (the one "already
  done?" check); ``staged``: data a commit publishes (a local file, an upload in parts); ``streaming``:
  a file uploaded in parts while it is written;
- ``uris``: the syntax of storage URIs and model references.

``open_storage(uri)`` opens a folder URI. It has no side effects beyond the connection: ``tiny://`` data is
resolved to a ``file://`` folder by whoever runs a task (``synthrec.tiny.resolve_uri``) before it gets here.
"""

from __future__ import annotations

from pathlib import Path

from synthrec.storage.base import CHUNK, MAX_JSON_BYTES, MiB, ObjectInfo, Storage, clean_key
from synthrec.storage.commit import (
    commit_file,
    commit_staged,
    existing_commit,
    read_marker,
    upload_tree,
    write_marker,
)
from synthrec.storage.errors import (
    CorruptObject,
    InvalidKey,
    ObjectNotFound,
    ObjectTooLarge,
    StorageConfigError,
    StorageConflict,
    StorageError,
    StorageFull,
    StoragePermissionError,
    TransientStorageError,
)
from synthrec.storage.files import TMP_SUFFIX, FileStorage, atomic_output, exclusive_lock, sha256_file
from synthrec.storage.recording import RecordingStorage
from synthrec.storage.s3 import RetryPolicy, S3Storage, S3Tuning
from synthrec.storage.uris import URIError, parse_storage_uri


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
        raise StorageConfigError(str(e)) from e
    if parsed.scheme == "file":
        return FileStorage(Path(parsed.path))
    if parsed.scheme == "tiny":
        raise StorageConfigError(
            f"{uri}: tiny:// is the built-in demo data, not a storage; open its file:// folder "
            "(synthrec.tiny.resolve_uri) after building it (synthrec tiny-models)"
        )
    return S3Storage.connect(
        parsed.bucket, parsed.path, endpoint=endpoint, region=region, retry=retry, tuning=tuning
    )


__all__ = [
    "CHUNK",
    "MAX_JSON_BYTES",
    "TMP_SUFFIX",
    "CorruptObject",
    "FileStorage",
    "InvalidKey",
    "MiB",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectTooLarge",
    "RecordingStorage",
    "RetryPolicy",
    "S3Storage",
    "S3Tuning",
    "Storage",
    "StorageConfigError",
    "StorageConflict",
    "StorageError",
    "StorageFull",
    "StoragePermissionError",
    "TransientStorageError",
    "atomic_output",
    "clean_key",
    "commit_file",
    "commit_staged",
    "exclusive_lock",
    "existing_commit",
    "open_storage",
    "read_marker",
    "sha256_file",
    "upload_tree",
    "write_marker",
]
