"""The storage interface: a folder of objects with keys relative to its root, and key validation.

A ``Storage`` is rooted at a folder URI; keys are relative to it (``shards/gen-00012.tar``) and use '/'.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from synthrec.storage.errors import CorruptObject, InvalidKey, ObjectTooLarge

if TYPE_CHECKING:
    from synthrec.storage.staged import PartUpload

MiB = 1024 * 1024
CHUNK = MiB
# The largest JSON document read whole (manifests of big datasets are a few MiB): a planted or damaged
# object must not take the reader's memory.
MAX_JSON_BYTES = 64 * MiB


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the storage root
    size: int
    etag: str | None = None  # S3 ETag without quotes; None on file://


# ---------------------------------------------------------------------------------------------- keys


def clean_key(key: str, *, folder: bool = False) -> str:
    """Validate a key relative to a storage root. With ``folder`` ('' and a trailing '/' are allowed).

    Rejected: absolute keys, '..' or '.' or empty segments, backslashes, NUL and other control characters.
    """
    if not isinstance(key, str):
        raise InvalidKey(f"storage keys are strings, got {type(key).__name__}")
    problem = key_problem(key, folder=folder)
    if problem:
        raise InvalidKey(f"invalid storage key {key!r}: {problem}")
    if folder and key == "":
        return ""
    body = key[:-1] if folder and key.endswith("/") else key
    return body + "/" if folder else body


def key_problem(key: str, *, folder: bool = False) -> str | None:
    """What is wrong with ``key`` as a storage key (``clean_key``'s rules), or None. The storage URI
    syntax (synthrec.storage.uris) applies the same rules to a URI's path, so that a URI that validates
    opens, and one that would not open does not validate."""
    if folder:
        if key == "":
            return None
        body = key[:-1] if key.endswith("/") else key
    else:
        body = key
    if not body:
        return "it is empty" if not folder else "it is only '/'"
    if body.startswith("/"):
        return "it is absolute; keys are relative to the storage root"
    if "\\" in body:
        return "it contains a backslash; use '/' between folders"
    if any(ord(c) < 32 or c == "\x7f" for c in body):
        return "it contains a control character (NUL, newline, ...)"
    if body.endswith("/") or "//" in body:
        return "it has an empty path segment ('//' or a trailing '/')"
    if any(part in ("..", ".") for part in body.split("/")):
        return "it has a '.' or '..' segment"
    return None


def json_bytes(obj: Any) -> bytes:
    """JSON with sorted keys, so the same object always gives the same bytes."""
    return (json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


def too_large(target: str, size: int | None, limit: int) -> ObjectTooLarge:
    found = f"{size} bytes" if size is not None else "more"
    return ObjectTooLarge(
        f"{target} is {found}, more than the {limit} bytes synthrec reads of such an object; it was not "
        "written by synthrec or is damaged: delete it and re-run the step that writes it"
    )


def missing_message(target: str) -> str:
    return f"{target} does not exist; check the URI, or run the step that writes it first"


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
    def read_bytes(self, key: str, *, max_bytes: int | None = None) -> bytes:
        """The object's content; with ``max_bytes``, ``ObjectTooLarge`` for a larger object (nothing more
        than ``max_bytes`` + 1 bytes is read)."""

    @abstractmethod
    def open_stream(self, key: str) -> BinaryIO:
        """An object read front to back as a buffered binary stream, without holding it in memory (a
        streaming reader of a large shard). ObjectNotFound when it is missing."""

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

    # -- write-if-absent (the commit protocol's building block, synthrec.storage.commit)

    @property
    def atomic_creates(self) -> bool:
        """Whether ``create_bytes``/``create_file`` are atomic (of two racing creators exactly one wins).
        Without, they check then write, and the commit protocol verifies and repairs afterwards."""
        return False

    def create_bytes(self, key: str, data: bytes, *, sha256: str | None = None) -> bool:
        """Write ``data`` only if ``key`` does not exist: True when written, False when it existed.

        ``sha256`` (hex) is recorded with the object where the backend can, for ``content_tag``.
        This default checks, then writes (not atomic; ``atomic_creates`` is False)."""
        if self.exists(key):
            return False
        self.write_bytes(key, data)
        return True

    def create_file(self, local_path: str | os.PathLike[str], key: str, *, sha256: str | None = None) -> bool:
        """``create_bytes`` for a local file (streamed, multipart on S3)."""
        if self.exists(key):
            return False
        self.upload_file(local_path, key)
        return True

    def replace_file(
        self, local_path: str | os.PathLike[str], key: str, *, current_tag: str | None, sha256: str
    ) -> bool:
        """Overwrite ``key`` with a local file only if its ``content_tag`` is still ``current_tag``
        (compare-and-swap): True when replaced, False when it changed or vanished meanwhile. This default
        checks, then writes (not atomic)."""
        if not self.exists(key) or self.content_tag(key) != current_tag:
            return False
        self.upload_file(local_path, key)
        return True

    def content_tag(self, key: str) -> str | None:
        """What identifies an object written by ``create_*`` or an upload (synthrec.storage.staged): the
        sha256 recorded with it (S3 metadata) or computed (file://), or the token of an S3 upload in parts;
        None when the backend has no record (an object written otherwise)."""
        return self.sha256(key)

    def open_upload(self, key: str) -> PartUpload:
        """An upload of ``key`` in parts, invisible until the commit protocol publishes it
        (synthrec.storage.staged). This default spools the parts to a local file."""
        from synthrec.storage.staged import SpooledUpload

        return SpooledUpload(self, key)

    def read_json(self, key: str, *, max_bytes: int = MAX_JSON_BYTES) -> Any:
        """A JSON document, at most ``max_bytes`` long (``ObjectTooLarge`` otherwise)."""
        data = self.read_bytes(key, max_bytes=max_bytes)
        try:
            return json.loads(data)
        except ValueError as e:
            raise CorruptObject(
                f"{self.url(key)} is not valid JSON ({e}); it was not written by synthrec or is damaged: "
                "delete it and re-run the step that writes it"
            ) from e

    def write_json(self, key: str, obj: Any) -> None:
        """Write JSON with sorted keys, so the same object always gives the same bytes."""
        self.write_bytes(key, json_bytes(obj))

    def create_json(self, key: str, obj: Any) -> bool:
        """``write_json`` only if ``key`` does not exist (``create_bytes``)."""
        return self.create_bytes(key, json_bytes(obj))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"
