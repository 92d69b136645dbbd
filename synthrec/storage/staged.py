"""Data staged for a key but not yet in storage, which the commit protocol (synthrec.storage.commit)
publishes only if the key is absent (``create``) or still holds the data it expects (``replace``).

Two kinds: a local file (``LocalFile``: ``commit_file``'s data) and an upload whose parts went up while
the data was being written (``PartUpload``: S3 multipart upload, a temporary file beside the object on
file://; ``Storage.open_upload``). An upload is invisible until published, and ``discard`` leaves nothing
of it behind, so the losing writer of a shard leaves no trace.

Each published object carries a *tag* that ``Storage.content_tag`` reads back: the data's sha256 where
it is known when the object is created (a local file; file:// computes it), or, for an S3 upload, a
random token set at CreateMultipartUpload, when the sha256 is not known yet. The commit protocol keys a
writer's pending record by that tag, which is how it finds the record of the data that is there.
"""

from __future__ import annotations

import os
import tempfile
from abc import ABC, abstractmethod
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from synthrec.storage.base import Storage


class StagedData(ABC):
    """Data ready to be published at its key (see the module docstring)."""

    sha256: str = ""
    size: int = 0

    @property
    def tag(self) -> str:
        """What ``Storage.content_tag`` of the key returns once this data is published there."""
        return self.sha256

    @abstractmethod
    def create(self) -> bool:
        """Publish only if the key is absent (atomically where ``Storage.atomic_creates``): True when
        published, False when the key existed."""

    @abstractmethod
    def replace(self, current_tag: str | None) -> bool:
        """Publish over the key only if its ``content_tag`` is still ``current_tag`` (compare-and-swap):
        True when replaced, False when it changed or vanished meanwhile."""

    def discard(self) -> None:  # noqa: B027 (a local file has nothing to discard)
        """Forget data that was not published (nothing of it is left in storage); a no-op once published."""


class LocalFile(StagedData):
    """A complete local file (its sha256 known): ``Storage.create_file`` / ``replace_file``."""

    def __init__(
        self, storage: Storage, local_path: str | os.PathLike[str], key: str, *, sha256: str, size: int
    ) -> None:
        self.storage, self.path, self.key = storage, local_path, key
        self.sha256, self.size = sha256, size

    def create(self) -> bool:
        return self.storage.create_file(self.path, self.key, sha256=self.sha256)

    def replace(self, current_tag: str | None) -> bool:
        return self.storage.replace_file(self.path, self.key, current_tag=current_tag, sha256=self.sha256)


class PartUpload(StagedData):
    """An object uploaded in parts while it is written: ``upload_part`` each part (every one but the last
    at least ``min_part`` bytes), ``seal`` with the sha256 and size of the whole, then publish it as
    ``StagedData``. ``discard`` (also before ``seal``) aborts it."""

    min_part: int = 1

    @abstractmethod
    def upload_part(self, data: bytes) -> None: ...

    def seal(self, sha256: str, size: int) -> PartUpload:
        """Every part is sent: the data is complete and ready to be published."""
        self.sha256, self.size = sha256, size
        return self


class SpooledUpload(PartUpload):
    """For a storage without uploads in parts of its own: the parts are spooled to a local temporary file,
    which is published with ``create_file`` / ``replace_file`` (no overlap, the same guarantees)."""

    def __init__(self, storage: Storage, key: str) -> None:
        self.storage, self.key = storage, key
        fd, name = tempfile.mkstemp(prefix="synthrec-upload-")
        self.path = Path(name)
        self.file = os.fdopen(fd, "wb")

    def upload_part(self, data: bytes) -> None:
        self.file.write(data)

    def seal(self, sha256: str, size: int) -> PartUpload:
        self.file.close()
        return super().seal(sha256, size)

    def create(self) -> bool:
        return LocalFile(self.storage, self.path, self.key, sha256=self.sha256, size=self.size).create()

    def replace(self, current_tag: str | None) -> bool:
        local = LocalFile(self.storage, self.path, self.key, sha256=self.sha256, size=self.size)
        return local.replace(current_tag)

    def discard(self) -> None:
        with suppress(OSError):
            self.file.close()
        with suppress(OSError):
            self.path.unlink()
