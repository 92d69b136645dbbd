"""The commit protocol: a data object counts as written only once its commit marker exists.

A marker is a small JSON object written last, carrying the spec hash of what produced the data.
``existing_commit`` is the one check every worker makes before it starts: done already (skip), committed
by another spec (conflict), or not yet. ``commit_file`` (a local file) and ``commit_staged`` (also an
upload whose parts went up while the data was written, ``Storage.open_upload``) write data and marker so
that two writers of one shard (a retried pod and a slow original) end with ONE consistent commit, whose
marker describes exactly the data in storage, and both return it:

1. The writer records the marker it would write as a *pending record* under ``.synthrec-commits/``
   (keyed by the marker, the data's tag and the spec), so that anyone can finish its commit. The tag
   (synthrec.storage.staged) is the data's sha256, or for an S3 upload in parts a token set when the
   upload started (the sha256 is only known at its end; the marker carries both then).
2. It creates the data object only if absent (``StagedData.create``: S3 ``If-None-Match: *`` on PutObject
   or CompleteMultipartUpload, link(2) on file://), recording the tag with it. The data key is the lock:
   the first creator owns it.
3. The marker is created only if absent, with the content of the pending record of the data that is
   actually there (found by ``Storage.content_tag``): its own, or, when another writer got there first,
   that writer's (rolled forward, whether that writer is still running or died before its marker). Both
   race to write the same marker. The loser's data is discarded (its multipart upload aborted).
4. Data no pending record describes (left by an older synthrec or written by hand) is replaced with a
   compare-and-swap (S3 ``If-Match``, flock on file://), never blindly.

Where the store cannot create atomically (an S3 service that ignores the conditional headers, a
filesystem without hard links; ``Storage.atomic_creates``), the same steps check, then write, and the
writer afterwards verifies that marker and data agree and repairs the marker from the data's pending
record until they do; pending records are then kept, as later repairs may need them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from synthrec.storage.base import MAX_JSON_BYTES, ObjectInfo, Storage, clean_key
from synthrec.storage.errors import ObjectNotFound, StorageConflict, StorageError, TransientStorageError
from synthrec.storage.files import sha256_file
from synthrec.storage.staged import LocalFile, StagedData
from synthrec.timestamps import utc_stamp

log = logging.getLogger(__name__)

_MARKER_FIELDS = ("spec_hash", "written_at", "sha256", "size", "data_token")
COMMITS_DIR = ".synthrec-commits/"  # pending records of commits in flight, below the storage root
# Rounds of the commit loop (and of verify-and-repair): each one only repeats when another writer moved
# the data key between two of our steps, so a handful is plenty.
_ROUNDS = 8


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
    if existing is not None:
        _same_spec(storage, marker_key, existing, spec_hash, what=what)
    return existing


def _same_spec(
    storage: Storage, marker_key: str, marker: dict[str, Any], spec_hash: str, *, what: str
) -> None:
    if marker["spec_hash"] != spec_hash:
        raise StorageConflict(
            f"{what} is already committed by another spec (spec hash {marker['spec_hash']}, marker "
            f"{storage.url(marker_key)}), not by this one ({spec_hash}); nothing was overwritten. Use a new "
            "output URI for a changed spec, or delete the old output to redo it"
        )


def commit_file(
    storage: Storage,
    local_path: str | os.PathLike[str],
    data_key: str,
    marker_key: str,
    *,
    spec_hash: str,
    **fields: Any,
) -> dict[str, Any]:
    """Commit ``local_path`` as ``data_key`` with the marker ``marker_key`` (sha256, size and ``fields``).

    Returns the commit that stands: this writer's, or the one of a writer of the same spec that got there
    first (then nothing of this one is left in storage). Idempotent: a marker with the same ``spec_hash``
    is returned and nothing is written. A marker of another spec hash raises ``StorageConflict`` and
    nothing is touched. A crash at any point leaves either no marker (the next run finishes or redoes the
    commit) or a marker that matches the data.
    """
    what = storage.url(data_key)
    _check_fields(fields)
    existing = existing_commit(storage, marker_key, spec_hash, what=what)
    if existing is not None:
        return existing
    data = LocalFile(
        storage, local_path, data_key, sha256=sha256_file(local_path), size=os.path.getsize(local_path)
    )
    return commit_staged(storage, data, data_key, marker_key, spec_hash=spec_hash, **fields)


def commit_staged(
    storage: Storage, data: StagedData, data_key: str, marker_key: str, *, spec_hash: str, **fields: Any
) -> dict[str, Any]:
    """``commit_file`` for staged data (synthrec.storage.staged): a local file, or an upload whose parts
    were sent while the data was written (``Storage.open_upload``), published by the same protocol. The
    data is discarded unless it is what the commit that stands describes (a losing upload is aborted)."""
    try:
        _check_fields(fields)
        what = storage.url(data_key)
        existing = existing_commit(storage, marker_key, spec_hash, what=what)
        if existing is not None:
            return existing
        marker = {**fields, "sha256": data.sha256, "size": data.size, "spec_hash": spec_hash}
        if data.tag != data.sha256:  # an S3 upload in parts: its token finds its pending record
            marker["data_token"] = data.tag
        marker["written_at"] = utc_stamp()
        return _Commit(storage, data, data_key, marker_key, marker, what).run()
    finally:
        data.discard()


def _check_fields(fields: dict[str, Any]) -> None:
    reserved = sorted(set(fields) & set(_MARKER_FIELDS))
    if reserved:
        raise ValueError(f"the commit computes {', '.join(reserved)} itself; do not pass them as fields")


def pending_key(marker_key: str, data_tag: str, spec_hash: str) -> str:
    """Where the marker a writer is about to commit waits, by marker, data (its tag: the sha256, or the
    token of an S3 upload in parts; synthrec.storage.staged) and spec."""
    spec_tag = hashlib.sha256(spec_hash.encode()).hexdigest()[:16]
    return f"{_pending_dir(marker_key)}{data_tag}.{spec_tag}.json"


def _tag_of(record: dict[str, Any]) -> Any:
    """The tag of the data a marker or pending record describes (``Storage.content_tag`` of that data)."""
    return record.get("data_token") or record.get("sha256")


def _pending_dir(marker_key: str) -> str:
    return f"{COMMITS_DIR}{clean_key(marker_key)}/"


class _Commit:
    """One writer's run of the protocol (the module docstring); ``run`` returns the commit that stands."""

    def __init__(
        self,
        storage: Storage,
        data: StagedData,
        data_key: str,
        marker_key: str,
        marker: dict[str, Any],
        what: str,
    ) -> None:
        self.storage = storage
        self.data = data
        self.data_key = data_key
        self.marker_key = marker_key
        self.marker = marker
        self.what = what
        self.spec_hash: str = marker["spec_hash"]
        self.tag: str = _tag_of(marker)
        self.atomic = storage.atomic_creates

    def run(self) -> dict[str, Any]:
        storage = self.storage
        storage.write_json(pending_key(self.marker_key, self.tag, self.spec_hash), self.marker)
        for _ in range(_ROUNDS):
            owner = self._own_or_find_data_owner()
            if isinstance(owner, _Done):
                return self._finish(owner.marker)
            if owner is None:
                continue  # the data key moved under us: look again
            storage.create_json(self.marker_key, owner)  # False: another writer committed first
            final = existing_commit(storage, self.marker_key, self.spec_hash, what=self.what)
            if final is not None:
                return self._finish(final)
        raise self._unsettled()

    def _own_or_find_data_owner(self) -> dict[str, Any] | _Done | None:
        """The marker that describes the data at the data key once this returns (ours when we created it),
        ``_Done`` when a commit already stands, None when the key changed meanwhile (try again)."""
        storage = self.storage
        if self.data.create():
            return self.marker
        done = existing_commit(storage, self.marker_key, self.spec_hash, what=self.what)
        if done is not None:
            return _Done(done)
        try:
            content = storage.content_tag(self.data_key)
        except ObjectNotFound:
            return None
        owner = self._pending(content) if content else None
        if owner is not None:
            return owner  # another writer's data: finish its commit (it may have died before its marker)
        # Data nobody's pending record describes: left by an interrupted writer of an older synthrec, or
        # written by hand. Pending records are only removed after a marker exists, so look once more.
        done = existing_commit(storage, self.marker_key, self.spec_hash, what=self.what)
        if done is not None:
            return _Done(done)
        log.info("replacing %s: uncommitted data no writer accounts for", self.what)
        replaced = self.data.replace(content)
        return self.marker if replaced else None

    def _pending(self, data_tag: str) -> dict[str, Any] | None:
        """The pending marker of the data with this tag: this spec's if there is one, else any."""
        storage = self.storage
        keys = [pending_key(self.marker_key, data_tag, self.spec_hash)]
        keys += [
            info.key
            for info in storage.list(f"{_pending_dir(self.marker_key)}{data_tag}.")
            if info.key != keys[0]
        ]
        for key in keys:
            try:
                record = json.loads(storage.read_bytes(key, max_bytes=MAX_JSON_BYTES))
            except ObjectNotFound:  # removed since the listing: its commit stands now
                continue
            except ValueError:  # not a record we wrote (storage errors propagate: never guess)
                continue
            if (
                isinstance(record, dict)
                and _tag_of(record) == data_tag
                and isinstance(record.get("spec_hash"), str)
            ):
                return record
        return None

    def _finish(self, final: dict[str, Any]) -> dict[str, Any]:
        if not (self.atomic and self.storage.atomic_creates):
            return self._verify_and_repair(final)
        # Single-winner stores: with the marker in place no writer needs a pending record any more
        # (a writer that reaches the data key now finds the marker), so remove them all.
        for info in list(self.storage.list(_pending_dir(self.marker_key))):
            try:
                self.storage.delete(info.key)
            except StorageError as exc:  # tidying only
                log.warning("could not remove %s: %s", self.storage.url(info.key), exc)
        return final

    def _verify_and_repair(self, marker: dict[str, Any]) -> dict[str, Any]:
        """Check-then-write stores: make the marker describe the data actually in storage, from that
        data's pending record, until both agree (each racer does this after its last write)."""
        storage = self.storage
        for _ in range(_ROUNDS):
            try:
                content = storage.content_tag(self.data_key)
            except ObjectNotFound:
                content = None
            if content is not None and _tag_of(marker) == content:
                _same_spec(storage, self.marker_key, marker, self.spec_hash, what=self.what)
                return marker
            record = self._pending(content) if content else None
            if record is None:
                break
            log.warning(
                "repairing %s: its marker did not describe the data a concurrent writer left", self.what
            )
            storage.write_json(self.marker_key, record)
            marker = read_marker(storage, self.marker_key) or record
        raise self._unsettled()

    def _unsettled(self) -> TransientStorageError:
        return TransientStorageError(
            f"cannot commit {self.what}: other writers kept changing it (retried {_ROUNDS} times); two or "
            f"more pods are writing the same shard. Retry; if it persists, check that only one run writes "
            f"to {self.storage.uri}"
        )


class _Done:
    """A commit that stands already (found while trying to commit)."""

    def __init__(self, marker: dict[str, Any]) -> None:
        self.marker = marker


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
