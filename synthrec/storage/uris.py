"""Parsing of storage URIs and model references (pure functions, no I/O).

Storage URIs name a folder (prefix) where artifacts live: ``s3://bucket/prefix/`` or ``file:///abs/path/``.
Model references name a model folder: a Hugging Face id (``org/name``, ``hf://org/name@revision``), an
``s3://`` folder, a ``file://`` folder, or (for open_clip only) a built-in architecture name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from synthrec.storage.base import key_problem

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_HF_REVISION = re.compile(r"^[A-Za-z0-9_.\-/]{1,200}$")

# Built-in tiny random-weight models and a tiny drawn dataset (synthrec/tiny/), built offline on first
# use: tiny://sd, tiny://clip, tiny://t5 as models and tiny://real/train, tiny://real/test as real data.
# They make the quickstart run anywhere (a laptop, a cluster without a model hub); accuracy is meaningless.
# Under tiny://world/ the same names are the TOY WORLD (synthrec/toyworld/): tiny models trained on drawn
# coloured shapes, built once, in which synthetic data really helps (tiny://world/sd, .../real/test).
TINY_MODELS = ("sd", "clip", "t5")
TOY_WORLD_PREFIX = "world/"

# Used by the CRD schema (and by pydantic) so that both layers reject the same strings. A path is
# segments that storage keys accept (synthrec.storage.base.key_problem): no '.', '..' or empty segment,
# no backslash or control character; leading slashes are dropped. RE2 syntax (the API server's), so no
# look-arounds: a segment starts with a character other than '.', or '.' and another, or '..' and a third.
_CHAR = r"[^/\x00-\x1f\x7f\\]"
_SEGMENT = rf"(?:[^/.\x00-\x1f\x7f\\]|\.[^/.\x00-\x1f\x7f\\]|\.\.{_CHAR}){_CHAR}*"
_PATH = rf"/+(?:{_SEGMENT}/)*(?:{_SEGMENT})?"
_S3 = rf"s3://[a-z0-9][a-z0-9.\-]{{1,61}}[a-z0-9](?:{_PATH})?"
_FILE = rf"file://{_PATH}"
OUTPUT_URI_PATTERN = rf"^(?:{_S3}|{_FILE})$"
STORAGE_URI_PATTERN = rf"^(?:{_S3}|{_FILE}|tiny://(?:world/)?real(?:{_PATH})?)$"
VOC_URI_PATTERN = rf"^(?:{_S3}|{_FILE}|tiny://world/voc/?)$"  # a PASCAL VOC folder (detection transfer)
MODEL_REF_PATTERN = (
    rf"^(?:hf://[^\s@]+(@[^\s]+)?|{_S3}|{_FILE}|tiny://(world/)?(sd|clip|t5)/?"
    r"|[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9_.\-]+)$"
)


class URIError(ValueError):
    """A URI or model reference that cannot be used; the message says what is expected."""


@dataclass(frozen=True)
class StorageURI:
    scheme: Literal["s3", "file", "tiny"]
    bucket: str  # empty for file:// and tiny://
    # s3: key prefix without leading slash ('' for the bucket root); file: absolute path; tiny: real/...
    path: str

    def __str__(self) -> str:
        if self.scheme == "tiny":
            return f"tiny://{self.path}"
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.path}" if self.path else f"s3://{self.bucket}/"
        return f"file://{self.path}"


def parse_storage_uri(
    uri: str, *, allow_tiny: bool = True, tiny_set: Literal["real", "voc"] = "real"
) -> StorageURI:
    """Parse ``s3://bucket/prefix`` or ``file:///abs/path`` (or read-only built-in data: ``tiny://real/...``,
    or with ``tiny_set="voc"`` the toy world's detection set ``tiny://world/voc``)."""
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
    if uri.startswith("tiny://"):
        path = uri[len("tiny://") :].strip("/")
        if not allow_tiny:
            raise URIError(f"{uri!r}: tiny:// is built-in read-only data; write to s3:// or file:// instead")
        if tiny_set == "voc":
            if path != TOY_WORLD_PREFIX + "voc":
                raise URIError(
                    f"{uri!r}: the built-in detection set is tiny://world/voc (the toy world's PASCAL VOC "
                    "folder; the random-weight demo has none)"
                )
        elif path.removeprefix(TOY_WORLD_PREFIX).split("/")[0] != "real":
            raise URIError(
                f"{uri!r}: the built-in tiny data is tiny://real/train and tiny://real/test (random-weight "
                "demo) or tiny://world/real/train and tiny://world/real/test (the toy world)"
            )
        _check_segments(uri, path)
        return StorageURI("tiny", "", path)
    raise URIError(f"{uri!r}: unsupported storage URI; use s3://bucket/prefix/ or file:///abs/path/")


def _check_segments(uri: str, path: str) -> None:
    """The path of a URI obeys the storage key rules: what validates here opens at run time."""
    problem = key_problem(path.lstrip("/"), folder=True)
    if problem:
        raise URIError(f"{uri!r}: its path {problem.removeprefix('it ')}")


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

    kind: Literal["hf", "s3", "file", "name", "tiny"]
    # hf: repo id; s3: s3:// folder URI; file: absolute path; name: builtin name; tiny: sd, world/sd, ...
    location: str
    revision: str | None = None

    def __str__(self) -> str:
        if self.kind == "hf":
            return f"hf://{self.location}" + (f"@{self.revision}" if self.revision else "")
        if self.kind == "file":
            return f"file://{self.location}"
        if self.kind == "tiny":
            return f"tiny://{self.location}"
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
    if ref.startswith("tiny://"):
        name = ref[len("tiny://") :].strip("/")
        if name.removeprefix(TOY_WORLD_PREFIX) not in TINY_MODELS:
            raise URIError(
                f"{ref!r}: the built-in tiny models are "
                + ", ".join(f"tiny://{m}" for m in TINY_MODELS)
                + " (random weights) and "
                + ", ".join(f"tiny://{TOY_WORLD_PREFIX}{m}" for m in TINY_MODELS)
                + " (the trained toy world)"
            )
        return ModelRef("tiny", name)
    if "://" in ref:
        raise URIError(
            f"{ref!r}: unsupported scheme; use hf://, s3://, file:// (or tiny:// for the demo models)"
        )
    if _HF_ID.match(ref):
        return ModelRef("hf", ref)
    if allow_name and re.match(r"^[A-Za-z0-9][A-Za-z0-9_.@\-]*$", ref):
        return ModelRef("name", ref)
    raise URIError(
        f"{ref!r}: not a model reference; use org/name or hf://org/name@revision (Hugging Face), "
        "s3://bucket/folder/ or file:///abs/folder"
    )
