"""The storage interface: a folder of objects with keys relative to its root, and key validation.

A ``Storage`` is rooted at a folder URI; keys are relative to it (``shards/gen-00012.tar``) and use '/'.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from synthrec.storage.errors import CorruptObject, InvalidKey

MiB = 1024 * 1024
CHUNK = MiB


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
            raise CorruptObject(
                f"{self.url(key)} is not valid JSON ({e}); it was not written by synthrec or is damaged: "
                "delete it and re-run the step that writes it"
            ) from e

    def write_json(self, key: str, obj: Any) -> None:
        """Write JSON with sorted keys, so the same object always gives the same bytes."""
        self.write_bytes(key, (json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"
