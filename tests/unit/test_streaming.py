"""Uploading a file while it is written (the generate stage's shard tar): parts go up as they fill, the
object appears only once the upload completes, with the bytes and sha256 of the finished file, and an
aborted upload leaves nothing, on file:// and on S3 (moto)."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from synthrec.storage import open_storage
from synthrec.storage.streaming import MIN_PART, FileTail

PART = MIN_PART  # S3's smallest part: the test writes a few of them


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
    sha256, size = tail.finish()
    data = path.read_bytes()
    assert storage.read_bytes("shards/gen-00000.tar") == data
    assert (sha256, size) == (hashlib.sha256(data).hexdigest(), len(data))
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
