"""``.synthrec/written/<stage>-<shard>-<token>.json``: the keys one worker process wrote for one resource.

Workers of a resource that has a uid (every resource on a cluster) write through a recording storage
(``synthrec.storage.RecordingStorage``), which keeps this ledger up to date before each new object is
written. Deleting the resource's artifacts (``spec.output.onDelete: Delete``, the cleanup worker) deletes
exactly the keys in the ledgers that carry the resource's uid, and refuses when the prefix holds a ledger
of another resource.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import Field

from synthrec.contract.base import Part, parse_document
from synthrec.contract.layout import WRITTEN_KEYS
from synthrec.storage.uris import URIError, parse_storage_uri

WRITTEN_VERSION = 1


class Writer(Part):
    """The resource a worker wrote for (its uid: a later resource of the same name has another)."""

    kind: str
    name: str
    namespace: str | None = None
    uid: str


class WrittenKeys(Part):
    version: Literal[1] = WRITTEN_VERSION
    resource: Writer
    stage: str
    shard: int | None = None
    keys: list[str] = Field(description="Relative to the resource's output root, sorted.")

    def document(self) -> bytes:
        return (json.dumps(self.model_dump(mode="json"), sort_keys=True, indent=1) + "\n").encode()


def is_ledger(key: str) -> bool:
    """A ledger key, at the root or at any depth below (a nested resource's)."""
    return key.startswith(WRITTEN_KEYS) or f"/{WRITTEN_KEYS}" in key


def parse_written(raw: bytes, where: str) -> WrittenKeys:
    return parse_document(WrittenKeys, raw, where)


def enclosing_folders(uri: str) -> list[str]:
    """The folders that hold ``uri`` (nearest first, up to the bucket or filesystem root), where the output
    of another resource that encloses this one would keep its ledgers."""
    try:
        parsed = parse_storage_uri(uri, allow_tiny=False)
    except URIError:
        return []
    if parsed.scheme not in ("s3", "file"):
        return []
    parts = [p for p in parsed.path.split("/") if p]
    base = f"s3://{parsed.bucket}/" if parsed.scheme == "s3" else "file:///"
    return [base + "".join(f"{p}/" for p in parts[:n]) for n in range(len(parts) - 1, -1, -1)]


def root_refusal(uri: str) -> str | None:
    """Why the artifacts under ``uri`` are never deleted, whatever the ledgers say (a bucket or filesystem
    root is nobody's output), or None."""
    try:
        parsed = parse_storage_uri(uri)
    except URIError:
        return None
    if parsed.scheme == "s3" and not parsed.path.strip("/"):
        return f"{uri} is the root of bucket {parsed.bucket!r}: a bucket root is never deleted"
    if parsed.scheme == "file" and not parsed.path.strip("/"):
        return f"{uri} is the root of the filesystem: it is never deleted"
    return None
