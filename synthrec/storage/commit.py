"""The commit protocol: a data object counts as written only once its commit marker exists.

A marker is a small JSON object written last, carrying the spec hash of what produced the data.
``commit_file`` uploads then marks, and refuses to touch data committed by another spec
(``StorageConflict``); ``existing_commit`` is the one check every worker makes before it starts: done
already (skip), committed by another spec (conflict), or not yet.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from synthrec.storage.base import ObjectInfo, Storage, clean_key
from synthrec.storage.errors import ObjectNotFound, StorageConflict, StorageError
from synthrec.storage.files import sha256_file
from synthrec.timestamps import utc_stamp

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


def existing_commit(storage: Storage, marker_key: str, spec_hash: str, *, what: str) -> dict[str, Any] | None:
    """The check every worker makes before it works: the marker at ``marker_key`` when it commits
    ``spec_hash`` (done already: skip), None when there is none (do the work). ``StorageConflict`` when
    another spec committed ``what``: nothing is touched."""
    existing = read_marker(storage, marker_key)
    if existing is not None and existing["spec_hash"] != spec_hash:
        raise StorageConflict(
            f"{what} is already committed by another spec (spec hash {existing['spec_hash']}, marker "
            f"{storage.url(marker_key)}), not by this one ({spec_hash}); nothing was overwritten. Use a new "
            "output URI for a changed spec, or delete the old output to redo it"
        )
    return existing


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
    existing = existing_commit(storage, marker_key, spec_hash, what=storage.url(data_key))
    if existing is not None:
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
