"""Two writers of one shard (a retried pod and a slow original) end with ONE consistent commit: the marker
and the data come from the same writer, and every writer returns the commit that stands. On file:// and
on S3 (moto over HTTP), in forced interleavings and with free-running threads; and the same on stores
without atomic creates (a filesystem without hard links, an S3 service that ignores If-None-Match). Writers
commit a local file (``commit_file``) or stream their shard in parts while writing it (the generate
stage's ``FileTail`` + ``commit_staged``); a losing stream leaves no upload and no object behind."""

from __future__ import annotations

import copy
import errno
import hashlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from synthrec.storage import (
    FileStorage,
    ObjectInfo,
    RecordingStorage,
    S3Storage,
    Storage,
    StorageConflict,
    commit_file,
    commit_staged,
    open_storage,
    read_marker,
)
from synthrec.storage import s3 as s3_module
from synthrec.storage.base import MiB
from synthrec.storage.commit import COMMITS_DIR
from synthrec.storage.files import TMP_SUFFIX
from synthrec.storage.s3 import PROBE_PREFIX, S3Tuning
from synthrec.storage.staged import PartUpload
from synthrec.storage.streaming import FileTail
from tests.harness.s3 import MOTO_WRITE_LOCK

DATA, MARKER = "shards/gen-00003.tar", "shards/gen-00003.done.json"


ATOMIC = ["file", "s3"]
CHECK_THEN_WRITE = ["file-without-links", "s3-ignoring-conditions"]


@pytest.fixture(params=ATOMIC + CHECK_THEN_WRITE)
def storage(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Storage:
    return _open(request, tmp_path, monkeypatch)


@pytest.fixture(params=CHECK_THEN_WRITE)
def check_then_write(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Storage:
    return _open(request, tmp_path, monkeypatch)


def _open(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Storage:
    monkeypatch.setattr(s3_module, "_CONDITIONAL", {})  # probe the store anew
    if request.param.startswith("file"):
        if request.param == "file-without-links":
            monkeypatch.setattr(os, "link", _no_hard_links)
        opened = open_storage(f"file://{tmp_path}/root")
    else:
        bucket = request.getfixturevalue("s3_bucket")
        opened = open_storage(bucket.uri + "root/")
        if request.param == "s3-ignoring-conditions":  # an S3 service from before conditional writes
            assert isinstance(opened, S3Storage)
            opened.client.meta.events.register("before-sign.s3", _drop_conditions)
    assert opened.atomic_creates == (request.param in ATOMIC)
    return opened


def _no_hard_links(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
    raise OSError(errno.EPERM, "Operation not permitted (no hard links on this filesystem)", str(dst))


def _drop_conditions(request: Any, **_: Any) -> None:
    for header in ("If-None-Match", "If-Match"):
        if header in request.headers:
            del request.headers[header]


class Gates(Storage):
    """The storage of one writer, which stops at a named point until a test opens a gate.

    ``pause_after_data``: the writer's data object is in storage and its marker is not yet written.
    """

    def __init__(
        self,
        inner: Storage,
        *,
        pause_after_data: threading.Event | None = None,
        pause_before_publish: threading.Event | None = None,
    ) -> None:
        self.inner = inner
        self.uri = inner.uri
        self.pause_after_data = pause_after_data
        self.pause_before_publish = pause_before_publish  # a stream's parts are all sent, not yet published
        self.data_written = threading.Event()
        self.data_ready = threading.Event()

    def open_upload(self, key: str) -> PartUpload:
        return _GatedUpload(self, self.inner.open_upload(key), key)

    def _after_write(self, key: str) -> None:
        if key == DATA:
            self.data_written.set()
            if self.pause_after_data is not None:
                assert self.pause_after_data.wait(timeout=60), "the test never opened the gate"

    def child(self, prefix: str) -> Storage:
        return self.inner.child(prefix)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def open_stream(self, key: str) -> Any:
        return self.inner.open_stream(key)

    def read_bytes(self, key: str, **kw: Any) -> bytes:
        return self.inner.read_bytes(key, **kw)

    def write_bytes(self, key: str, data: bytes) -> None:
        self.inner.write_bytes(key, data)
        self._after_write(key)

    def upload_file(self, local_path: str | os.PathLike[str], key: str) -> None:
        self.inner.upload_file(local_path, key)
        self._after_write(key)

    def create_file(self, local_path: str | os.PathLike[str], key: str, **kw: Any) -> bool:
        created = self.inner.create_file(local_path, key, **kw)
        if created:
            self._after_write(key)
        return created

    def create_bytes(self, key: str, data: bytes, **kw: Any) -> bool:
        created = self.inner.create_bytes(key, data, **kw)
        if created:
            self._after_write(key)
        return created

    def content_tag(self, key: str) -> str | None:
        return self.inner.content_tag(key)

    @property
    def atomic_creates(self) -> bool:
        return self.inner.atomic_creates

    def download_file(self, key: str, local_path: str | os.PathLike[str]) -> None:
        self.inner.download_file(key, local_path)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def sha256(self, key: str) -> str:
        return self.inner.sha256(key)


class _GatedUpload(PartUpload):
    """The backend's own upload in parts, stopping at the gates of its ``Gates``."""

    def __init__(self, gates: Gates, inner: PartUpload, key: str) -> None:
        self.gates, self.inner, self.key = gates, inner, key
        self.min_part = inner.min_part

    @property
    def tag(self) -> str:
        return self.inner.tag

    def upload_part(self, data: bytes) -> None:
        self.inner.upload_part(data)

    def seal(self, sha256: str, size: int) -> PartUpload:
        self.inner.seal(sha256, size)
        return super().seal(sha256, size)

    def _publishing(self) -> None:
        self.gates.data_ready.set()
        if self.gates.pause_before_publish is not None:
            assert self.gates.pause_before_publish.wait(timeout=60), "the test never opened the gate"

    def create(self) -> bool:
        self._publishing()
        created = self.inner.create()
        if created:
            self.gates._after_write(self.key)
        return created

    def replace(self, current_tag: str | None) -> bool:
        self._publishing()
        replaced = self.inner.replace(current_tag)
        if replaced:
            self.gates._after_write(self.key)
        return replaced

    def discard(self) -> None:
        self.inner.discard()


def _tar(tmp_path: Path, writer: str) -> Path:
    """A writer's shard: different bytes per writer (GPU nondeterminism, JPEG encoders, tar mtimes)."""
    path = tmp_path / f"{writer}.tar"
    path.write_bytes(f"shard 3 as written by {writer}\n".encode() * 500)
    return path


def _commit(storage: Storage, tmp_path: Path, writer: str, spec_hash: str = "s1") -> dict[str, Any]:
    return commit_file(storage, _tar(tmp_path, writer), DATA, MARKER, spec_hash=spec_hash, writer=writer)


def _stream(storage: Storage, tmp_path: Path, writer: str, spec_hash: str = "s1") -> dict[str, Any]:
    """A writer that uploads its shard while writing it, as the generate stage does: the tar grows on
    disk, ``FileTail`` sends it in parts, and the sealed upload is committed."""
    content = _tar(tmp_path, writer).read_bytes()
    path = tmp_path / f"{writer}.streamed.tar"
    path.write_bytes(b"")
    tail = FileTail(storage, DATA, path)
    try:
        with open(path, "ab") as fh:
            for start in range(0, len(content), 4096):
                fh.write(content[start : start + 4096])
                fh.flush()
                tail.poke()
        staged = tail.finish()
    except BaseException:
        tail.abort()
        raise
    return commit_staged(storage, staged, DATA, MARKER, spec_hash=spec_hash, writer=writer)


WRITERS = {"plain": _commit, "streamed": _stream}


def assert_nothing_left_of_the_losers(storage: Storage) -> None:
    """No multipart upload on S3, no temporary file on file://: only the commit that stands."""
    inner = storage.inner if isinstance(storage, Gates) else storage
    if isinstance(inner, S3Storage):
        uploads = inner.client.list_multipart_uploads(Bucket=inner.bucket).get("Uploads", [])
        assert uploads == [], "a losing writer's multipart upload was left behind"
    elif isinstance(inner, FileStorage):
        temps = [name for _, _, files in os.walk(inner.root) for name in files if name.endswith(TMP_SUFFIX)]
        assert not [t for t in temps if ".lock" not in t], f"temporary files left behind: {temps}"


def assert_one_consistent_commit(storage: Storage, returned: list[dict[str, Any]]) -> dict[str, Any]:
    """Marker and data of one writer. On stores with atomic creates every writer also returned that
    commit; where they check, then write, a writer can have returned one that a racer replaced later."""
    marker = read_marker(storage, MARKER)
    assert marker is not None
    data = storage.read_bytes(DATA)
    assert hashlib.sha256(data).hexdigest() == marker["sha256"], "marker and data from different writers"
    assert data.startswith(f"shard 3 as written by {marker['writer']}".encode())
    if storage.atomic_creates:
        for got in returned:
            assert got == marker, "a writer reported a commit that does not stand"
    return marker


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def target() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # surfaced by the test
            out.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    return thread, out


# ----------------------------------------------------------------------------------- interleavings


def test_a_slow_original_that_finishes_after_the_retry_does_not_split_the_commit(
    storage: Storage, tmp_path: Path
) -> None:
    """The issue's case: the original uploads its data and stalls; the retried pod commits the shard;
    then the original wakes up and writes its marker. Before conditional commits: data of the retry,
    marker of the original, a permanent sha256 mismatch for every reader."""
    gate = threading.Event()
    original = Gates(storage, pause_after_data=gate)
    thread, result = _in_thread(lambda: _commit(original, tmp_path, "original"))
    assert original.data_written.wait(timeout=60)

    retry = _commit(storage, tmp_path, "retry")
    gate.set()
    thread.join(timeout=60)

    assert not isinstance(result[0], BaseException), result[0]
    assert_one_consistent_commit(storage, [retry, result[0]])


def test_a_writer_that_starts_after_the_commit_leaves_it_untouched(storage: Storage, tmp_path: Path) -> None:
    first = _commit(storage, tmp_path, "first")
    second = _commit(storage, tmp_path, "second")

    marker = assert_one_consistent_commit(storage, [first, second])
    assert marker["writer"] == "first"


def test_a_writer_of_another_spec_conflicts_even_when_it_races(storage: Storage, tmp_path: Path) -> None:
    gate = threading.Event()
    original = Gates(storage, pause_after_data=gate)
    thread, result = _in_thread(lambda: _commit(original, tmp_path, "original", spec_hash="one"))
    assert original.data_written.wait(timeout=60)

    with pytest.raises(StorageConflict, match="another spec"):
        _commit(storage, tmp_path, "other", spec_hash="two")
    gate.set()
    thread.join(timeout=60)

    marker = assert_one_consistent_commit(storage, [result[0]])
    assert marker["spec_hash"] == "one"


class Crash(Exception):
    """A writer dying between its data and its marker (the pod was killed)."""


def _die_after_data(
    storage: Storage, tmp_path: Path, spec_hash: str = "s1", write: Callable[..., Any] = _commit
) -> None:
    def crash(key: str) -> None:
        if key == DATA:
            raise Crash()

    dying = Gates(storage)
    dying._after_write = crash  # type: ignore[method-assign]
    with pytest.raises(Crash):
        write(dying, tmp_path, "dead", spec_hash=spec_hash)
    assert read_marker(storage, MARKER) is None


def test_a_writer_that_died_before_its_marker_is_rolled_forward_by_the_next(
    storage: Storage, tmp_path: Path
) -> None:
    _die_after_data(storage, tmp_path)

    marker = _commit(storage, tmp_path, "retry")

    assert marker["writer"] == "dead", "the complete data of the dead writer was committed as it was"
    assert_one_consistent_commit(storage, [marker])


def test_a_dead_writer_of_another_spec_is_rolled_forward_and_then_conflicts(
    storage: Storage, tmp_path: Path
) -> None:
    _die_after_data(storage, tmp_path, spec_hash="one")

    with pytest.raises(StorageConflict, match=r"already committed by another spec \(spec hash one"):
        _commit(storage, tmp_path, "new", spec_hash="two")

    assert assert_one_consistent_commit(storage, [])["writer"] == "dead"


def test_pending_records_are_removed_once_committed_where_creates_are_atomic(
    storage: Storage, tmp_path: Path
) -> None:
    _commit(storage, tmp_path, "only")
    left = [info.key for info in storage.list(COMMITS_DIR) if not info.key.startswith(PROBE_PREFIX)]
    # Check-then-write stores keep them: a later repair needs the record of the data that stands.
    assert bool(left) == (not storage.atomic_creates)
    if isinstance(storage, FileStorage) and storage.atomic_creates:
        assert not (storage.root / COMMITS_DIR).exists(), "empty folders of pending records were left"


def test_s3_that_rejects_conditional_headers_is_used_without_them(s3_faults, monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(s3_module, "_CONDITIONAL", {})
    s3_faults.proxy.fail(None, status=501, code="NotImplemented", header="If-None-Match")
    storage = open_storage(s3_faults.uri)

    assert not storage.atomic_creates
    marker = _commit(storage, tmp_path, "only")
    assert_one_consistent_commit(storage, [marker])


def test_s3_409_conditional_request_conflict_is_retried_into_one_commit(
    s3_faults, monkeypatch, tmp_path
) -> None:
    """S3 answers a conditional write that races another on the same key with 409
    ConditionalRequestConflict and says to retry; moto never does, so the proxy injects it."""
    monkeypatch.setattr(s3_module, "_CONDITIONAL", {})
    storage = open_storage(s3_faults.uri)
    assert storage.atomic_creates
    rule = s3_faults.proxy.fail(
        2, status=409, code="ConditionalRequestConflict", method="PUT", path="shards/", header="If-None-Match"
    )

    marker = _commit(storage, tmp_path, "only")

    assert rule.hits == 2
    assert_one_consistent_commit(storage, [marker])


def test_s3_multipart_data_is_created_and_replaced_conditionally(s3_bucket, tmp_path: Path) -> None:
    small = S3Tuning(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    storage = open_storage(s3_bucket.uri, tuning=small)
    big = tmp_path / "big.tar"
    big.write_bytes(os.urandom(11 * MiB))
    digest = hashlib.sha256(big.read_bytes()).hexdigest()

    assert storage.create_file(big, "big.tar", sha256=digest)
    assert not storage.create_file(big, "big.tar", sha256=digest)
    assert storage.content_tag("big.tar") == digest
    other = tmp_path / "other.tar"
    other.write_bytes(os.urandom(6 * MiB))
    other_digest = hashlib.sha256(other.read_bytes()).hexdigest()
    assert not storage.replace_file(other, "big.tar", current_tag="stale", sha256=other_digest)
    assert storage.replace_file(other, "big.tar", current_tag=digest, sha256=other_digest)
    assert storage.sha256("big.tar") == other_digest
    uploads = s3_bucket.client.list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads", [])
    assert uploads == [], "a refused multipart upload was left behind"


# ---------------------------------------------------------------------------------- free-running


@pytest.mark.parametrize(
    "kinds", [("plain",) * 8, ("streamed",) * 4, ("streamed", "plain")], ids=["plain", "streamed", "mixed"]
)
def test_many_concurrent_writers_end_with_one_consistent_commit(
    storage: Storage, tmp_path: Path, kinds: tuple[str, ...]
) -> None:
    """Free-running writers of one shard, each committing a local file or streaming its shard in parts."""
    start = threading.Barrier(len(kinds))

    def one(kind: str, name: str) -> dict[str, Any]:
        start.wait(timeout=60)
        return WRITERS[kind](storage, tmp_path, name)

    threads = [_in_thread(lambda k=kind, n=f"w{i}": one(k, n)) for i, kind in enumerate(kinds)]
    for thread, _ in threads:
        thread.join(timeout=120)
    results = [out[0] for _, out in threads]
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors

    assert_one_consistent_commit(storage, results)
    assert_nothing_left_of_the_losers(storage)


def test_without_atomic_creates_a_writer_overtaken_after_its_check_repairs_the_marker(
    check_then_write: Storage, tmp_path: Path
) -> None:
    """The race that check-then-write stores allow: the original sees no data, stalls, the retry commits,
    then the original writes its data over the committed shard. It finds the retry's marker, which no
    longer describes the data, and replaces it with the marker of its own data (its pending record)."""
    gate, passed_check = threading.Event(), threading.Event()
    original = copy.copy(check_then_write)
    check = original.exists

    def stalling_exists(key: str) -> bool:
        found = check(key)
        if key == DATA and not found:
            passed_check.set()
            assert gate.wait(timeout=60), "the test never opened the gate"
        return found

    original.exists = stalling_exists  # type: ignore[method-assign]
    thread, result = _in_thread(lambda: _commit(original, tmp_path, "original"))
    assert passed_check.wait(timeout=60)

    retry = _commit(check_then_write, tmp_path, "retry")
    assert retry["writer"] == "retry"
    gate.set()
    thread.join(timeout=60)

    assert not isinstance(result[0], BaseException), result[0]
    marker = assert_one_consistent_commit(check_then_write, [result[0]])
    assert marker == result[0] and marker["writer"] == "original"


def test_a_recording_storage_keeps_the_backends_atomic_creates_and_records_every_key(
    tmp_path: Path,
) -> None:
    """Workers write through RecordingStorage (the ledger that onDelete deletes by): the base class's
    check-then-write defaults would undo the commit protocol's single winner under it."""
    inner = open_storage(f"file://{tmp_path}/root")
    recording = RecordingStorage(inner, "ledger.txt", lambda keys: "\n".join(keys).encode())
    original = Gates(recording, pause_after_data=threading.Event())
    slow, out = _in_thread(lambda: _commit(original, tmp_path, "original"))
    assert original.data_written.wait(timeout=60)

    retry = _commit(recording, tmp_path, "retry")
    original.pause_after_data.set()  # type: ignore[union-attr]
    slow.join(timeout=60)

    assert recording.atomic_creates
    assert_one_consistent_commit(inner, [retry, out[0]])
    assert {DATA, MARKER} <= set(inner.read_bytes("ledger.txt").decode().split("\n"))
    assert recording.read_json(MARKER, max_bytes=10_000) == retry


# -------------------------------------------------------------------------------------- the double


@pytest.mark.parametrize("operation", ["PutObject", "CompleteMultipartUpload"])
def test_moto_like_s3_lets_exactly_one_of_two_racing_conditional_writes_win(
    s3_bucket, monkeypatch: pytest.MonkeyPatch, operation: str
) -> None:
    """S3 decides If-None-Match atomically; moto as shipped checks, then writes. Each writer is held right
    after moto's If-None-Match check until the other one has passed it too, or is seen waiting for the
    harness's write lock (tests/harness/s3.py): without the lock both would "create" the object."""
    from botocore.exceptions import ClientError
    from moto.s3.models import S3Backend

    checked = 0
    original = S3Backend.get_object
    changed = MOTO_WRITE_LOCK.changed
    client, bucket = s3_bucket.client, s3_bucket.name

    def rendezvous(self: Any, bucket_name: str, key_name: str, *args: Any, **kwargs: Any) -> Any:
        nonlocal checked
        found = original(self, bucket_name, key_name, *args, **kwargs)
        caller = sys._getframe(1)
        is_check = caller.f_code.co_name == "put_object" or (  # PutObject's If-None-Match check
            caller.f_code.co_name == "_key_response_post" and caller.f_locals.get("query", {}).get("uploadId")
        )  # CompleteMultipartUpload's
        if key_name == "race" and is_check:
            with changed:
                checked += 1
                changed.notify_all()
                assert changed.wait_for(lambda: checked >= 2 or MOTO_WRITE_LOCK.waiting > 0, timeout=60)
        return found

    def put(body: bytes) -> None:
        client.put_object(Bucket=bucket, Key="race", Body=body, IfNoneMatch="*")

    def complete(body: bytes) -> None:
        upload = client.create_multipart_upload(Bucket=bucket, Key="race")["UploadId"]
        part = client.upload_part(Bucket=bucket, Key="race", UploadId=upload, PartNumber=1, Body=body)
        client.complete_multipart_upload(
            Bucket=bucket,
            Key="race",
            UploadId=upload,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
            IfNoneMatch="*",
        )

    monkeypatch.setattr(S3Backend, "get_object", rendezvous)
    write = put if operation == "PutObject" else complete

    def attempt(body: bytes) -> bool:
        try:
            write(body)
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "PreconditionFailed"
            return False
        return True

    runs = [_in_thread(lambda b=body: attempt(b)) for body in (b"one", b"two")]
    for thread, _ in runs:
        thread.join(timeout=60)

    assert sorted(out[0] for _, out in runs) == [False, True]


# ----------------------------------------------------------------------------------- streamed writers


@pytest.mark.parametrize("original_kind", ["streamed", "plain"])
def test_a_slow_streamed_retry_or_original_that_publishes_after_the_commit_changes_nothing(
    storage: Storage, tmp_path: Path, original_kind: str
) -> None:
    """The original has sent every part of its shard and stalls before publishing it; the retried pod
    streams and commits the shard; then the original publishes. Before streamed commits were conditional,
    the original's CompleteMultipartUpload (or rename) replaced the committed data under the retry's
    marker: a permanent sha256 mismatch."""
    gate = threading.Event()
    original = Gates(storage, pause_before_publish=gate)
    if original_kind == "plain":
        original.create_file = _pausing(original.create_file, original, gate)  # type: ignore[method-assign]
    marker = _stalled_original_then_streamed_retry(
        storage, tmp_path, original, WRITERS[original_kind], original.data_ready, gate
    )
    if storage.atomic_creates:
        assert marker["writer"] == "retry"


def _stalled_original_then_streamed_retry(
    storage: Storage,
    tmp_path: Path,
    original: Gates,
    write: Callable[..., dict[str, Any]],
    stalled: threading.Event,
    gate: threading.Event,
) -> dict[str, Any]:
    """The original writes until it stalls at ``gate``; a streamed retry commits; the original resumes.
    Returns the commit that stands, checked to be one and consistent, with nothing of the loser left."""
    thread, result = _in_thread(lambda: write(original, tmp_path, "original"))
    assert stalled.wait(timeout=60)

    retry = _stream(storage, tmp_path, "retry")
    gate.set()
    thread.join(timeout=60)

    assert not isinstance(result[0], BaseException), result[0]
    marker = assert_one_consistent_commit(storage, [retry, result[0]])
    assert_nothing_left_of_the_losers(storage)
    return marker


def _pausing(create_file: Callable[..., bool], gates: Gates, gate: threading.Event) -> Callable[..., bool]:
    def paused(*args: Any, **kwargs: Any) -> bool:
        gates.data_ready.set()
        assert gate.wait(timeout=60), "the test never opened the gate"
        return create_file(*args, **kwargs)

    return paused


def test_a_slow_streamed_original_that_finishes_after_the_retry_does_not_split_the_commit(
    storage: Storage, tmp_path: Path
) -> None:
    """The original's stream is published and it stalls before its marker; the retry streams its own;
    then the original wakes. One commit, the original's (rolled forward by the retry), and the retry's
    upload aborted."""
    gate = threading.Event()
    original = Gates(storage, pause_after_data=gate)
    marker = _stalled_original_then_streamed_retry(
        storage, tmp_path, original, _stream, original.data_written, gate
    )
    if storage.atomic_creates:
        assert marker["writer"] == "original"


def test_a_streamed_writer_that_died_before_its_marker_is_rolled_forward(
    storage: Storage, tmp_path: Path
) -> None:
    _die_after_data(storage, tmp_path, write=_stream)

    marker = _commit(storage, tmp_path, "retry")

    assert marker["writer"] == "dead", "the complete data of the dead stream was committed as it was"
    assert_one_consistent_commit(storage, [marker])
    assert_nothing_left_of_the_losers(storage)


def test_a_stream_that_loses_on_s3_aborts_its_upload_and_the_commit_says_what_was_streamed(
    s3_bucket, tmp_path: Path
) -> None:
    storage = open_storage(s3_bucket.uri)
    first = _stream(storage, tmp_path, "first")
    second = _stream(storage, tmp_path, "second")

    assert second == first and first["writer"] == "first"
    head = s3_bucket.client.head_object(Bucket=s3_bucket.name, Key=DATA)
    assert head["Metadata"]["synthrec-token"] == first["data_token"], "the marker names the data's token"
    assert s3_bucket.client.list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads", []) == []
    assert [info.key for info in storage.list()] == sorted([DATA, MARKER]), "a loser left something behind"


def test_a_streamed_s3_commit_retries_409_conditional_request_conflict(
    s3_faults, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """S3 answers a CompleteMultipartUpload that races another conditional write of the key with 409
    ConditionalRequestConflict; moto never does, so the proxy injects it."""
    monkeypatch.setattr(s3_module, "_CONDITIONAL", {})
    storage = open_storage(s3_faults.uri)
    assert storage.atomic_creates
    rule = s3_faults.proxy.fail(
        1,
        status=409,
        code="ConditionalRequestConflict",
        method="POST",
        path="shards/",
        header="If-None-Match",
    )

    marker = _stream(storage, tmp_path, "only")

    assert rule.hits == 1
    assert_one_consistent_commit(storage, [marker])
    assert_nothing_left_of_the_losers(storage)


def test_moto_like_s3_honours_if_match_on_complete_multipart_upload(s3_bucket) -> None:
    """S3 completes a multipart upload under If-Match only over the object with that ETag (412 otherwise,
    404 when the key is gone); moto 5 ignores the header there, so the harness checks it."""
    from botocore.exceptions import ClientError

    client, bucket = s3_bucket.client, s3_bucket.name

    def complete(key: str, etag: str) -> str:
        upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        part = client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"new")
        try:
            client.complete_multipart_upload(
                Bucket=bucket,
                Key=key,
                UploadId=upload,
                MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
                IfMatch=etag,
            )
        except ClientError as exc:
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
            return str(exc.response["Error"]["Code"])
        return "completed"

    current = client.put_object(Bucket=bucket, Key="k", Body=b"old")["ETag"]
    assert complete("k", '"00000000000000000000000000000000"') == "PreconditionFailed"
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"old"
    assert complete("gone", current) in {"NoSuchKey", "404"}
    assert complete("k", current) == "completed"
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"new"


def test_s3_that_ignores_if_match_on_complete_multipart_upload_is_not_trusted_with_atomic_creates(
    s3_bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A streamed shard that replaces unaccounted data is published by a CompleteMultipartUpload under
    If-Match: a store that honours If-None-Match there but ignores If-Match must fall back too."""
    monkeypatch.setattr(s3_module, "_CONDITIONAL", {})
    storage = open_storage(s3_bucket.uri + "root/")
    assert isinstance(storage, S3Storage)

    dropped = []

    def drop_if_match_on_complete(request: Any, **_: Any) -> None:
        if request.method == "POST" and "uploadId=" in request.url and "If-Match" in request.headers:
            del request.headers["If-Match"]
            dropped.append(request.url)

    storage.client.meta.events.register("before-sign.s3", drop_if_match_on_complete)

    assert not storage.atomic_creates
    assert dropped, "the probe never sent If-Match on a CompleteMultipartUpload"
