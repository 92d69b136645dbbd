"""Uploading a file while it is written (the generate stage's shard tar): parts go up as they fill, the
object appears only once its commit publishes it, with the bytes and sha256 of the finished file, and an
aborted upload leaves nothing, on file:// and on S3 (moto). Concurrent writers of one shard:
tests/integration/test_commit_concurrency.py."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from synthrec.storage import FileStorage, RecordingStorage, Storage, commit_staged, open_storage
from synthrec.storage.base import MiB
from synthrec.storage.staged import SpooledUpload
from synthrec.storage.streaming import FileTail

PART = 5 * MiB  # S3's smallest part: the test writes a few of them


def _storage(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[object, object]:
    if backend == "file":
        return open_storage((tmp_path / "out").as_uri() + "/"), None
    bucket = request.getfixturevalue("s3_bucket")
    return open_storage(bucket.uri), bucket


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_parts_go_up_while_the_file_grows_and_the_object_appears_complete(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    storage, _ = _storage(backend, tmp_path, request)
    path = tmp_path / "shard.tar"
    path.write_bytes(b"")
    sent: list[int] = []
    part = threading.Event()

    def on_part(total: int) -> None:
        sent.append(total)
        part.set()

    tail = FileTail(storage, "shards/gen-00000.tar", path, part_size=PART, on_part=on_part)
    with open(path, "ab") as fh:
        for chunk in [os.urandom(PART // 2) for _ in range(3)]:
            fh.write(chunk)
            fh.flush()
            tail.poke()
        assert part.wait(60), "no part was uploaded while the file was being written"
        assert sent == [PART]  # one full part so far; the rest waits for more bytes or the end
        assert not storage.exists("shards/gen-00000.tar")  # nothing visible before the upload completes
        fh.write(b"the end")
    staged = tail.finish()
    assert not storage.exists("shards/gen-00000.tar")  # sealed, still not published
    marker = commit_staged(
        storage, staged, "shards/gen-00000.tar", "shards/gen-00000.done.json", spec_hash="h"
    )
    data = path.read_bytes()
    assert storage.read_bytes("shards/gen-00000.tar") == data
    assert (marker["sha256"], marker["size"]) == (hashlib.sha256(data).hexdigest(), len(data))
    assert sent == [PART, len(data)]  # the rest went up as the last part


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_an_aborted_upload_leaves_nothing(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    storage, bucket = _storage(backend, tmp_path, request)
    path = tmp_path / "shard.tar"
    path.write_bytes(os.urandom(PART + 10))
    part = threading.Event()
    tail = FileTail(storage, "shards/gen-00001.tar", path, part_size=PART, on_part=lambda _: part.set())
    tail.poke()
    assert part.wait(60)
    tail.abort()
    assert list(storage.list()) == []
    if bucket is None:
        assert not (tmp_path / "out" / "shards").exists()  # not even the folder it made
    else:
        assert not bucket.client.list_multipart_uploads(Bucket=bucket.name).get("Uploads")


def test_a_recording_storage_streams_through_the_backends_upload_and_records_the_key_first(
    tmp_path: Path,
) -> None:
    """On a cluster workers write through RecordingStorage (the ledger onDelete deletes by): the shard is
    recorded before its first part, and streams through the backend's own upload, not a local spool."""
    inner = open_storage((tmp_path / "out").as_uri() + "/")
    recording = RecordingStorage(inner, "ledger.txt", lambda keys: "\n".join(keys).encode())
    path = tmp_path / "shard.tar"
    path.write_bytes(b"")

    tail = FileTail(recording, "shards/gen-00002.tar", path)
    assert "shards/gen-00002.tar" in inner.read_bytes("ledger.txt").decode().split("\n")
    assert not isinstance(tail.upload, SpooledUpload)
    path.write_bytes(b"shard 2")
    tail.poke()
    commit_staged(
        recording, tail.finish(), "shards/gen-00002.tar", "shards/gen-00002.done.json", spec_hash="h"
    )

    assert inner.read_bytes("shards/gen-00002.tar") == b"shard 2"


class _NoUploadsOfItsOwn(FileStorage):
    open_upload = Storage.open_upload  # the interface's default: parts spooled to a local file


def test_a_storage_without_uploads_of_its_own_spools_the_parts_and_commits_them_conditionally(
    tmp_path: Path,
) -> None:
    storage = _NoUploadsOfItsOwn(tmp_path / "out")
    uploads = []
    for writer in (b"first", b"second"):
        upload = storage.open_upload("shards/gen-00004.tar")
        assert isinstance(upload, SpooledUpload)
        upload.upload_part(writer)
        uploads.append(upload)
    markers = [
        commit_staged(
            storage,
            u.seal(hashlib.sha256(d).hexdigest(), len(d)),
            "shards/gen-00004.tar",
            "m.json",
            spec_hash="h",
        )
        for u, d in zip(uploads, (b"first", b"second"), strict=True)
    ]

    assert markers[0] == markers[1] and storage.read_bytes("shards/gen-00004.tar") == b"first"
    assert not any(u.path.exists() for u in uploads), "a spooled part file was left behind"
