"""Uploading an object while it is still being written: parts go up as they are ready, and the object
appears only when the upload completes (S3 multipart upload; on file:// a temporary file in the object's
folder, renamed into place). ``abort`` leaves nothing behind.

``FileTail`` follows a local file another thread appends to (the generate stage's shard tar) and uploads it
in parts of ``part_size`` bytes as they fill, hashing as it goes; ``finish`` uploads the rest once the writer
has closed the file. So the upload overlaps the generation, and at the end only the last part is left.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any, Protocol

from synthrec.storage.base import MiB, Storage, clean_key
from synthrec.storage.errors import StorageError

MIN_PART = 5 * MiB  # S3's smallest part (but the last)
DEFAULT_PART = 16 * MiB


class PartUpload(Protocol):
    min_part: int  # bytes of every part but the last

    def upload_part(self, data: bytes) -> None: ...

    def complete(self) -> None: ...

    def abort(self) -> None: ...


def open_part_upload(storage: Storage, key: str) -> PartUpload:
    """An upload of ``key`` in parts, on either backend."""
    from synthrec.storage.files import FileStorage
    from synthrec.storage.s3 import S3Storage

    if isinstance(storage, S3Storage):
        return _S3PartUpload(storage, key)
    if isinstance(storage, FileStorage):
        return _FilePartUpload(storage, key)
    raise StorageError(f"{storage!r} has no uploads in parts")


class _S3PartUpload:
    min_part = MIN_PART

    def __init__(self, storage: Any, key: str) -> None:
        self.storage, self.key = storage, clean_key(key)
        self.full = storage._key(key)
        self.parts: list[dict[str, Any]] = []
        self.upload_id = storage._call(
            "upload",
            key,
            lambda: storage.client.create_multipart_upload(Bucket=storage.bucket, Key=self.full)["UploadId"],
        )

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
        self.parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    def complete(self) -> None:
        if not self.parts:  # an empty object: one empty part
            self.upload_part(b"")
        self.storage._call(
            "upload",
            self.key,
            lambda: self.storage.client.complete_multipart_upload(
                Bucket=self.storage.bucket,
                Key=self.full,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": self.parts},
            ),
        )

    def abort(self) -> None:
        with suppress(Exception):
            self.storage.client.abort_multipart_upload(
                Bucket=self.storage.bucket, Key=self.full, UploadId=self.upload_id
            )


class _FilePartUpload:
    min_part = 1

    def __init__(self, storage: Any, key: str) -> None:
        self.path: Path = storage._path(key)
        # the folders this upload makes, removed again (if still empty) when it is aborted
        self.made = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name[:100]}.", suffix=".part")
        self.tmp = Path(tmp)
        self.file = os.fdopen(fd, "wb")

    def upload_part(self, data: bytes) -> None:
        self.file.write(data)

    def complete(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.chmod(self.tmp, 0o644)
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        with suppress(OSError):
            self.file.close()
        with suppress(OSError):
            self.tmp.unlink()
        for folder in self.made:  # deepest first
            with suppress(OSError):
                folder.rmdir()


class FileTail:
    """Uploads ``path`` to ``key`` of ``storage`` while another thread appends to it (see the module
    docstring). ``poke()`` after each append; ``finish()`` after the writer closed the file returns
    (sha256, size); ``abort()`` on failure. A failed part upload is re-raised at the next poke or finish."""

    def __init__(
        self,
        storage: Storage,
        key: str,
        path: str | os.PathLike[str],
        part_size: int = DEFAULT_PART,
        on_part: Callable[[int], None] | None = None,
    ):
        self.path = Path(path)
        self.upload = open_part_upload(storage, key)
        self.part_size = max(self.upload.min_part, part_size)
        self.on_part = on_part  # called with the bytes sent so far, after each part
        self.digest = hashlib.sha256()
        self.sent = 0
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="synthrec-upload", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        self._raise()
        self._wake.set()

    def finish(self) -> tuple[str, int]:
        self._closed.set()
        self._wake.set()
        self._thread.join()
        self._raise()
        self.upload.complete()
        return self.digest.hexdigest(), self.sent

    def abort(self) -> None:
        self._closed.set()
        self._wake.set()
        self._thread.join(timeout=60)
        self.upload.abort()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                while True:
                    self._wake.wait()
                    self._wake.clear()
                    closed = self._closed.is_set()
                    self._send(fh, closed)
                    if closed:
                        return
        except BaseException as exc:  # handed to the caller
            self._error = exc

    def _send(self, fh: Any, everything: bool) -> None:
        """Full parts while enough bytes are written; with ``everything`` the rest too."""
        while True:
            ready = os.path.getsize(self.path) - self.sent
            if ready < self.part_size and not (everything and ready > 0):
                return
            fh.seek(self.sent)
            data = fh.read(self.part_size if ready >= self.part_size else ready)
            self.upload.upload_part(data)
            self.digest.update(data)
            self.sent += len(data)
            if self.on_part is not None:
                self.on_part(self.sent)
