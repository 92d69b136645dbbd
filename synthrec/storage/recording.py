"""A storage that records every key written through it, write-ahead, in a ledger object of its own.

Deleting a resource's artifacts (``spec.output.onDelete: Delete``) must touch exactly what that resource
wrote, never what happens to lie under its prefix. So a worker writes through a :class:`RecordingStorage`:
before an object is written for the first time, the ledger (a small JSON document in the same storage,
rendered by the caller) is rewritten with that key in it. A crash between the two leaves a key in the
ledger that was never written (deleting it later is a no-op), never an object the ledger misses.

Each process has a ledger of its own (a retried pod and a slow original of one shard never overwrite each
other's record); keys are relative to the root the recording started at, also for writes through
``child()`` storages.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from typing import BinaryIO

from synthrec.storage.base import ObjectInfo, Storage, clean_key
from synthrec.storage.staged import PartUpload

_WRITING = ("write", "upload", "put", "copy", "commit", "move", "rename")


class _Ledger:
    """The keys one process wrote (or is about to write), persisted at ``key`` of ``storage``."""

    def __init__(self, storage: Storage, key: str, render: Callable[[list[str]], bytes]) -> None:
        self.storage, self.key, self.render = storage, clean_key(key), render
        self.keys: list[str] = []
        self._seen: set[str] = set()
        self._lock = threading.Lock()  # uploads may run on background threads

    def add(self, key: str) -> None:
        with self._lock:
            if key in self._seen:
                return
            self._seen.add(key)
            self.keys.append(key)
            self.storage.write_bytes(self.key, self.render(sorted(self.keys)))


class RecordingStorage(Storage):
    """``inner`` with every written key recorded in a ledger first (see the module docstring)."""

    def __init__(
        self,
        inner: Storage,
        ledger_key: str,
        render: Callable[[list[str]], bytes],
        *,
        _ledger: _Ledger | None = None,
        _prefix: str = "",
    ) -> None:
        self.inner = inner
        self.uri = inner.uri
        self.ledger = _ledger or _Ledger(inner, ledger_key, render)
        self._prefix = _prefix  # of this storage below the ledger's root

    def _record(self, key: str) -> None:
        self.ledger.add(self._prefix + clean_key(key))

    # -- writes: recorded first

    def write_bytes(self, key: str, data: bytes) -> None:
        self._record(key)
        self.inner.write_bytes(key, data)

    def upload_file(self, local_path: str | os.PathLike[str], key: str) -> None:
        self._record(key)
        self.inner.upload_file(local_path, key)

    # The conditional writes of the commit protocol (synthrec.storage.commit) keep the backend's own,
    # atomic implementation: the base class's defaults would check, then write.

    def create_bytes(self, key: str, data: bytes, *, sha256: str | None = None) -> bool:
        self._record(key)
        return self.inner.create_bytes(key, data, sha256=sha256)

    def create_file(self, local_path: str | os.PathLike[str], key: str, *, sha256: str | None = None) -> bool:
        self._record(key)
        return self.inner.create_file(local_path, key, sha256=sha256)

    def replace_file(
        self, local_path: str | os.PathLike[str], key: str, *, current_tag: str | None, sha256: str
    ) -> bool:
        self._record(key)
        return self.inner.replace_file(local_path, key, current_tag=current_tag, sha256=sha256)

    def open_upload(self, key: str) -> PartUpload:
        self._record(key)  # before any part: the upload may be published without passing through here
        return self.inner.open_upload(key)

    @property
    def atomic_creates(self) -> bool:
        return self.inner.atomic_creates

    def content_tag(self, key: str) -> str | None:
        return self.inner.content_tag(key)

    def open_stream(self, key: str) -> BinaryIO:
        return self.inner.open_stream(key)

    def child(self, prefix: str) -> RecordingStorage:
        folder = clean_key(prefix, folder=True)
        return RecordingStorage(
            self.inner.child(folder),
            self.ledger.key,
            self.ledger.render,
            _ledger=self.ledger,
            _prefix=self._prefix + folder,
        )

    # -- everything else as it is

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def read_bytes(self, key: str, *, max_bytes: int | None = None) -> bytes:
        return self.inner.read_bytes(key, max_bytes=max_bytes)

    def download_file(self, key: str, local_path: str | os.PathLike[str]) -> None:
        self.inner.download_file(key, local_path)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def sha256(self, key: str) -> str:
        return self.inner.sha256(key)

    def __getattr__(self, name: str) -> object:
        # Backend specifics (S3Storage.bucket, .endpoint, FileStorage.root) read through; a way of writing
        # that this class does not record never does (it would write behind the ledger's back).
        if name == "inner" or name.startswith(_WRITING):
            raise AttributeError(f"{type(self).__name__} does not record {name!r}: add it here first")
        return getattr(self.inner, name)
