"""Parsing of storage URIs and model references (pure functions, no I/O).

Storage URIs name a folder (prefix) where artifacts live: ``s3://bucket/prefix/`` or ``file:///abs/path/``.
Model references name a model folder: a Hugging Face id (``org/name``, ``hf://org/name@revision``), an
``s3://`` folder, a ``file://`` folder, or (for open_clip only) a built-in architecture name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_HF_REVISION = re.compile(r"^[A-Za-z0-9_.\-/]{1,200}$")

# Used by the CRD schema (and by pydantic) so that both layers reject the same strings.
STORAGE_URI_PATTERN = r"^(s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?|file:///.*)$"
MODEL_REF_PATTERN = (
    r"^(hf://[^\s@]+(@[^\s]+)?|s3://[^\s]+|file:///[^\s]*|[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9_.\-]+)$"
)


class URIError(ValueError):
    """A URI or model reference that cannot be used; the message says what is expected."""


@dataclass(frozen=True)
class StorageURI:
    scheme: Literal["s3", "file"]
    bucket: str  # empty for file://
    path: str  # s3: key prefix without leading slash ('' for the bucket root); file: absolute path

    def __str__(self) -> str:
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.path}" if self.path else f"s3://{self.bucket}/"
        return f"file://{self.path}"


def parse_storage_uri(uri: str) -> StorageURI:
    """Parse ``s3://bucket/prefix`` or ``file:///abs/path``; reject anything else with a clear message."""
    if not isinstance(uri, str) or not uri.strip():
        raise URIError("a storage URI is required, e.g. s3://bucket/prefix/ or file:///abs/path/")
    uri = uri.strip()
    if uri.startswith("s3://"):
        rest = uri[len("s3://") :]
        bucket, _, key = rest.partition("/")
        if not _BUCKET.match(bucket):
            raise URIError(
                f"{uri!r}: {bucket!r} is not a valid S3 bucket name "
                "(3-63 characters: lowercase letters, digits, '.', '-')"
            )
        _check_segments(uri, key)
        return StorageURI("s3", bucket, key.lstrip("/"))
    if uri.startswith("file://"):
        path = uri[len("file://") :]
        if not path.startswith("/"):
            raise URIError(f"{uri!r}: file URIs need an absolute path, e.g. file:///data/out/")
        _check_segments(uri, path)
        return StorageURI("file", "", path)
    raise URIError(f"{uri!r}: unsupported storage URI; use s3://bucket/prefix/ or file:///abs/path/")


def _check_segments(uri: str, path: str) -> None:
    if any(part == ".." for part in PurePosixPath(path).parts):
        raise URIError(f"{uri!r}: '..' is not allowed in a storage path")


def join(uri: str, *parts: str) -> str:
    """Join a folder URI and relative parts with exactly one '/' between them."""
    out = uri.rstrip("/")
    for part in parts:
        part = part.strip("/")
        if part:
            out += "/" + part
    return out


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference. ``kind`` says how to fetch it; ``location`` is what to fetch."""

    kind: Literal["hf", "s3", "file", "name"]
    location: str  # hf: repo id; s3: s3:// folder URI; file: absolute path; name: builtin name
    revision: str | None = None

    def __str__(self) -> str:
        if self.kind == "hf":
            return f"hf://{self.location}" + (f"@{self.revision}" if self.revision else "")
        if self.kind == "file":
            return f"file://{self.location}"
        return self.location


def parse_model_ref(ref: str, *, allow_name: bool = False) -> ModelRef:
    """Parse a model reference.

    ``org/name`` and ``hf://org/name[@revision]`` are Hugging Face repositories; ``s3://bucket/folder`` and
    ``file:///abs/folder`` are folders. With ``allow_name`` a bare name (``RN50``, ``ViT-B-16``) is accepted,
    which is how open_clip names its built-in architectures.
    """
    if not isinstance(ref, str) or not ref.strip():
        raise URIError(
            "a model reference is required, e.g. hf://org/name@revision, s3://bucket/model/ or file:///models/x"
        )
    ref = ref.strip()
    if ref.startswith("hf://"):
        body = ref[len("hf://") :]
        repo, sep, revision = body.partition("@")
        if not _HF_ID.match(repo):
            raise URIError(f"{ref!r}: expected hf://org/name or hf://org/name@revision")
        if sep and not _HF_REVISION.match(revision):
            raise URIError(f"{ref!r}: the revision after '@' must be a branch, tag or commit hash")
        return ModelRef("hf", repo, revision or None)
    if ref.startswith("s3://"):
        parse_storage_uri(ref)
        return ModelRef("s3", ref)
    if ref.startswith("file://"):
        path = parse_storage_uri(ref).path
        return ModelRef("file", path.rstrip("/") or "/")
    if "://" in ref:
        raise URIError(f"{ref!r}: unsupported scheme; use hf://, s3:// or file://")
    if _HF_ID.match(ref):
        return ModelRef("hf", ref)
    if allow_name and re.match(r"^[A-Za-z0-9][A-Za-z0-9_.@\-]*$", ref):
        return ModelRef("name", ref)
    raise URIError(
        f"{ref!r}: not a model reference; use org/name or hf://org/name@revision (Hugging Face), "
        "s3://bucket/folder/ or file:///abs/folder"
    )
