"""Object storage: file:// and s3:// (moto over HTTP) give the same behaviour; S3 survives injected faults."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path

import pytest

from synthrec.storage import (
    InvalidKey,
    ObjectInfo,
    ObjectNotFound,
    ObjectTooLarge,
    RetryPolicy,
    S3Tuning,
    Storage,
    StorageConflict,
    StorageError,
    StoragePermissionError,
    TransientStorageError,
    commit_file,
    open_storage,
    read_marker,
    upload_tree,
    write_marker,
)
from tests.harness.s3 import FAST_RETRIES

MiB = 1024 * 1024
# Our retry layer only, with tiny waits: keeps fault tests fast and the request counts exact.
FAST = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05, botocore_mode="standard", botocore_attempts=1)


@pytest.fixture(params=["file", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "file":
        return open_storage(f"file://{tmp_path}/root")
    bucket = request.getfixturevalue("s3_bucket")
    return open_storage(bucket.uri + "root/")


def _local(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / "local" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------------------------- both backends


def test_bytes_and_json_round_trip(storage: Storage) -> None:
    storage.write_bytes("a/b/c.bin", b"\x00\x01data")
    storage.write_json("meta.json", {"b": [1, 2], "a": "é"})

    assert storage.read_bytes("a/b/c.bin") == b"\x00\x01data"
    assert storage.read_json("meta.json") == {"a": "é", "b": [1, 2]}
    # Sorted keys: the same object always gives the same bytes (digests of JSON artifacts are stable).
    assert storage.read_bytes("meta.json") == '{\n  "a": "é",\n  "b": [\n    1,\n    2\n  ]\n}\n'.encode()
    assert storage.exists("a/b/c.bin")
    assert not storage.exists("a/b")  # a folder is not an object
    assert not storage.exists("nope")


def test_overwrite_replaces_content(storage: Storage) -> None:
    storage.write_bytes("k", b"first")
    storage.write_bytes("k", b"second")
    assert storage.read_bytes("k") == b"second"


def test_uri_url_and_child(storage: Storage) -> None:
    assert storage.uri.endswith("/root/")
    assert storage.url("x/y.tar") == storage.uri + "x/y.tar"
    child = storage.child("shards")
    assert child.uri == storage.uri + "shards/"
    child.write_bytes("gen-00001.tar", b"t")
    assert storage.read_bytes("shards/gen-00001.tar") == b"t"
    assert [o.key for o in child.list()] == ["gen-00001.tar"]


def test_missing_objects_raise_object_not_found_naming_the_uri(storage: Storage, tmp_path: Path) -> None:
    for call in (
        lambda: storage.read_bytes("missing.json"),
        lambda: storage.read_json("missing.json"),
        lambda: storage.sha256("missing.json"),
        lambda: storage.download_file("missing.json", tmp_path / "out"),
    ):
        with pytest.raises(ObjectNotFound, match=r"root/missing\.json does not exist"):
            call()
    with pytest.raises(ObjectNotFound, match=r"root/missing\.json does not exist"):
        storage.open_stream("missing.json")
    assert not (tmp_path / "out").exists()
    storage.delete("missing.json")  # deleting a missing object is fine


def test_a_stream_reads_an_object_front_to_back(storage: Storage) -> None:
    data = os.urandom(3 * MiB + 17)
    storage.write_bytes("blobs/big.tar", data)
    with storage.open_stream("blobs/big.tar") as stream:
        head = stream.read(1000)
        rest = b"".join(iter(lambda: stream.read(65536), b""))
    assert head + rest == data


def test_list_is_recursive_sorted_and_filtered_by_prefix(storage: Storage) -> None:
    for key in ["b/2", "a", "b/1/x", "b/10", "c.json", "ba"]:
        storage.write_bytes(key, key.encode())

    assert [o.key for o in storage.list()] == ["a", "b/1/x", "b/10", "b/2", "ba", "c.json"]
    assert [o.key for o in storage.list("b/")] == ["b/1/x", "b/10", "b/2"]
    assert [o.key for o in storage.list("b")] == ["b/1/x", "b/10", "b/2", "ba"]
    assert [o.key for o in storage.list("b/1")] == ["b/1/x", "b/10"]
    assert [o.key for o in storage.list("zzz/")] == []
    assert next(iter(storage.list("c"))) == ObjectInfo("c.json", 6, next(iter(storage.list("c"))).etag)


def test_delete_removes_the_object(storage: Storage) -> None:
    storage.write_bytes("x/y", b"1")
    storage.delete("x/y")
    assert not storage.exists("x/y")
    assert list(storage.list()) == []


def test_upload_download_and_sha256(storage: Storage, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    src = _local(tmp_path, "src.bin", data)
    storage.upload_file(src, "blobs/src.bin")

    dest = tmp_path / "out" / "deep" / "copy.bin"
    storage.download_file("blobs/src.bin", dest)

    assert dest.read_bytes() == data
    assert storage.sha256("blobs/src.bin") == hashlib.sha256(data).hexdigest()
    assert [p.name for p in dest.parent.iterdir()] == ["copy.bin"]  # no temp file left behind


def test_upload_of_a_missing_local_file_is_a_clear_error(storage: Storage, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=r"nothere\.bin .*not a readable local file"):
        storage.upload_file(tmp_path / "nothere.bin", "k")


@pytest.mark.parametrize(
    "key",
    ["../escape", "a/../../b", "/abs", "a\\b", "nul\x00", "a//b", "a/./b", "", "trailing/", "new\nline"],
)
def test_unsafe_keys_are_rejected_by_every_operation(storage: Storage, key: str, tmp_path: Path) -> None:
    src = _local(tmp_path, "f", b"1")
    for call in (
        lambda: storage.write_bytes(key, b"x"),
        lambda: storage.read_bytes(key),
        lambda: storage.exists(key),
        lambda: storage.delete(key),
        lambda: storage.upload_file(src, key),
        lambda: storage.download_file(key, tmp_path / "d"),
        lambda: storage.sha256(key),
        lambda: storage.url(key),
    ):
        with pytest.raises(InvalidKey, match="invalid storage key"):
            call()
    assert list(storage.list()) == []


@pytest.mark.parametrize("prefix", ["../x/", "/abs/", "a//"])
def test_unsafe_prefixes_are_rejected(storage: Storage, prefix: str) -> None:
    with pytest.raises(InvalidKey):
        storage.child(prefix)
    with pytest.raises(InvalidKey):
        list(storage.list(prefix))


def test_unicode_keys_round_trip(storage: Storage) -> None:
    storage.write_bytes("classes/Café «x» 🐍.json", b"{}")
    assert [o.key for o in storage.list("classes/")] == ["classes/Café «x» 🐍.json"]


def test_markers_round_trip_and_absent_marker_is_none(storage: Storage) -> None:
    assert read_marker(storage, "shards/gen-00000.done.json") is None
    written = write_marker(storage, "shards/gen-00000.done.json", spec_hash="abc", count=3)
    assert written["spec_hash"] == "abc" and written["count"] == 3
    assert written["written_at"].endswith("Z")
    assert read_marker(storage, "shards/gen-00000.done.json") == written


def test_a_non_marker_json_is_reported(storage: Storage) -> None:
    storage.write_json("m.json", [1, 2])
    with pytest.raises(StorageError, match=r"m\.json is not a synthrec commit marker"):
        read_marker(storage, "m.json")
    storage.write_bytes("bad.json", b"{not json")
    with pytest.raises(StorageError, match=r"bad\.json is not valid JSON"):
        read_marker(storage, "bad.json")


def test_commit_file_uploads_data_then_marker(storage: Storage, tmp_path: Path) -> None:
    data = b"tar bytes" * 1000
    src = _local(tmp_path, "gen-00001.tar", data)

    marker = commit_file(
        storage, src, "shards/gen-00001.tar", "shards/gen-00001.done.json", spec_hash="s1", count=7
    )

    assert marker["sha256"] == hashlib.sha256(data).hexdigest()
    assert marker["size"] == len(data)
    assert marker["count"] == 7 and marker["spec_hash"] == "s1"
    assert storage.read_bytes("shards/gen-00001.tar") == data
    assert read_marker(storage, "shards/gen-00001.done.json") == marker


def test_commit_file_with_the_same_spec_is_a_no_op(storage: Storage, tmp_path: Path) -> None:
    src = _local(tmp_path, "d.tar", b"original")
    first = commit_file(storage, src, "d.tar", "d.done.json", spec_hash="s1")
    src.write_bytes(b"a re-run that would write other bytes")

    again = commit_file(storage, src, "d.tar", "d.done.json", spec_hash="s1")

    assert again == first
    assert storage.read_bytes("d.tar") == b"original"


def test_commit_file_from_another_spec_conflicts_and_changes_nothing(
    storage: Storage, tmp_path: Path
) -> None:
    src = _local(tmp_path, "d.tar", b"from spec one")
    first = commit_file(storage, src, "d.tar", "d.done.json", spec_hash="one")
    other = _local(tmp_path, "other.tar", b"from spec two")

    conflict = r"d\.tar is already committed by another spec \(spec hash one.*\(two\)"
    with pytest.raises(StorageConflict, match=conflict):
        commit_file(storage, other, "d.tar", "d.done.json", spec_hash="two")

    assert storage.read_bytes("d.tar") == b"from spec one"
    assert read_marker(storage, "d.done.json") == first


def test_commit_file_rejects_fields_it_computes(storage: Storage, tmp_path: Path) -> None:
    src = _local(tmp_path, "d", b"x")
    with pytest.raises(ValueError, match="sha256"):
        commit_file(storage, src, "d", "d.done.json", spec_hash="s", sha256="forged")
    assert not storage.exists("d")


def test_uncommitted_data_is_overwritten_by_the_next_commit(storage: Storage, tmp_path: Path) -> None:
    storage.write_bytes("d.tar", b"half of a run that crashed before its marker")
    src = _local(tmp_path, "d.tar", b"complete")
    commit_file(storage, src, "d.tar", "d.done.json", spec_hash="s")
    assert storage.read_bytes("d.tar") == b"complete"


def test_capped_reads_refuse_larger_objects_without_reading_them(storage: Storage) -> None:
    document = b"[" + b"1," * 1000 + b"1]"
    storage.write_bytes("big.json", document)

    with pytest.raises(ObjectTooLarge, match=r"big\.json is 2003 bytes, more than the 100 bytes"):
        storage.read_bytes("big.json", max_bytes=100)
    with pytest.raises(ObjectTooLarge):
        storage.read_json("big.json", max_bytes=100)
    assert storage.read_bytes("big.json", max_bytes=len(document)) == document
    assert len(storage.read_json("big.json")) == 1001


def test_upload_tree_mirrors_a_folder(storage: Storage, tmp_path: Path) -> None:
    _local(tmp_path, "model/config.json", b"{}")
    _local(tmp_path, "model/unet/weights.bin", b"w" * 10)
    uploaded = upload_tree(storage, tmp_path / "local" / "model", "m")
    assert [(o.key, o.size) for o in uploaded] == [("m/config.json", 2), ("m/unet/weights.bin", 10)]
    assert [o.key for o in storage.list("m/")] == ["m/config.json", "m/unet/weights.bin"]


# ------------------------------------------------------------------------------------------ S3 only


def test_s3_uses_the_endpoint_from_the_environment(s3_faults, monkeypatch: pytest.MonkeyPatch) -> None:
    # AWS_ENDPOINT_URL_S3 wins over AWS_ENDPOINT_URL (the service-specific variable of the AWS SDKs).
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_faults.endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    storage = open_storage(s3_faults.uri)
    storage.write_bytes("k", b"v")
    assert s3_faults.proxy.count(method="PUT", path="/synthrec-test/k") == 1
    assert s3_faults.client.get_object(Bucket=s3_faults.name, Key="k")["Body"].read() == b"v"


def test_s3_listing_follows_pagination(s3_faults) -> None:
    storage = open_storage(s3_faults.uri + "p/", tuning=S3Tuning(page_size=3))
    for i in range(10):
        storage.write_bytes(f"k{i:02d}", b"x")
    storage.write_bytes("z/last", b"x")

    keys = [o.key for o in storage.list()]

    assert keys == [f"k{i:02d}" for i in range(10)] + ["z/last"]
    assert s3_faults.proxy.count(method="GET", path="list-type=2") == 4  # 11 keys, 3 per page


def test_s3_listing_skips_folder_placeholders_and_sibling_prefixes(s3_bucket) -> None:
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="data/", Body=b"")  # console-made "folder"
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="data/x", Body=b"1")
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="data-other/y", Body=b"1")
    assert [o.key for o in open_storage(s3_bucket.uri + "data").list()] == ["x"]


def test_s3_large_objects_use_multipart_both_ways(s3_faults, tmp_path: Path) -> None:
    tuning = S3Tuning(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=4)
    storage = open_storage(s3_faults.uri, tuning=tuning)
    data = os.urandom(20 * MiB)
    src = _local(tmp_path, "big.bin", data)

    storage.upload_file(src, "big.bin")
    storage.write_bytes("big2.bin", data)
    dest = tmp_path / "big.out"
    storage.download_file("big.bin", dest)

    for key in ("big.bin", "big2.bin"):
        etag = s3_faults.client.head_object(Bucket=s3_faults.name, Key=key)["ETag"]
        assert etag.endswith('-4"'), etag  # 4 parts of 5 MiB
    assert dest.read_bytes() == data
    assert storage.sha256("big2.bin") == hashlib.sha256(data).hexdigest()
    assert s3_faults.proxy.count(method="GET", path="big.bin") >= 4  # ranged part downloads


@pytest.mark.parametrize(
    ("status", "code"), [(503, "SlowDown"), (500, "InternalError"), (503, "ServiceUnavailable")]
)
def test_s3_transient_errors_are_retried(s3_faults, tmp_path: Path, status: int, code: str) -> None:
    storage = open_storage(s3_faults.uri, retry=FAST)
    s3_faults.proxy.fail(3, status=status, code=code)

    storage.write_bytes("k", b"survived")

    assert s3_faults.proxy.count(method="PUT", path="/k") == 4
    s3_faults.proxy.fail(3, status=status, code=code)
    assert storage.read_bytes("k") == b"survived"
    s3_faults.proxy.fail(2, status=status, code=code)
    assert [o.key for o in storage.list()] == ["k"]


def test_s3_dropped_connections_are_retried(s3_faults, tmp_path: Path) -> None:
    storage = open_storage(s3_faults.uri, retry=FAST)
    storage.write_bytes("k", b"v" * 1000)
    s3_faults.proxy.drop(2, method="GET")
    assert storage.read_bytes("k") == b"v" * 1000
    s3_faults.proxy.drop(1, method="HEAD")
    storage.download_file("k", tmp_path / "k")
    assert (tmp_path / "k").read_bytes() == b"v" * 1000


def test_s3_a_stream_resumes_from_the_byte_it_had_read_when_the_connection_drops(s3_faults) -> None:
    data = os.urandom(5 * MiB)
    s3_faults.client.put_object(Bucket=s3_faults.name, Key="x/blob.tar", Body=data)
    stream = open_storage(s3_faults.uri + "x/", retry=FAST).open_stream("blob.tar")
    head = stream.read(100_000)  # the buffer holds the first MiB, the body has the rest
    assert 0 < stream.raw.pos < len(data)
    stream.raw.body._raw_stream.close()  # the connection drops in the middle of the body
    rest = b"".join(iter(lambda: stream.read(65536), b""))
    assert head + rest == data
    assert s3_faults.proxy.count(method="GET", path="x/blob.tar") == 2  # one ranged GET resumed it


def test_s3_a_failed_multipart_part_is_retried(s3_faults, tmp_path: Path) -> None:
    tuning = S3Tuning(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    storage = open_storage(s3_faults.uri, retry=FAST, tuning=tuning)
    data = os.urandom(11 * MiB)
    s3_faults.proxy.fail(1, status=503, code="SlowDown", method="PUT", path="partNumber=2")

    storage.upload_file(_local(tmp_path, "b", data), "b")

    assert storage.sha256("b") == hashlib.sha256(data).hexdigest()


def test_s3_botocore_retries_inside_one_operation_with_the_default_policy(
    s3_faults, caplog, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in FAST_RETRIES:
        monkeypatch.delenv(name)
    assert RetryPolicy.from_env() == RetryPolicy()
    # Non-throttling 5xx: botocore's own (adaptive mode) retries absorb two failures within one call.
    storage = open_storage(s3_faults.uri)
    s3_faults.proxy.fail(2, status=500, code="InternalError")
    with caplog.at_level(logging.WARNING, logger="synthrec.storage"):
        storage.write_bytes("k", b"v")
    assert storage.read_bytes("k") == b"v"
    assert s3_faults.proxy.count(method="PUT") == 3
    assert caplog.records == []  # our outer layer was not needed


@dataclasses.dataclass(frozen=True)
class RecordedBackoff(RetryPolicy):
    """FAST, recording every backoff it chooses."""

    chosen: list[float] = dataclasses.field(default_factory=list)

    def delay(self, retry: int) -> float:
        value = super().delay(retry)
        self.chosen.append(value)
        return value


def test_s3_permanent_failure_surfaces_as_transient_storage_error(s3_faults) -> None:
    policy = RecordedBackoff(**{f.name: getattr(FAST, f.name) for f in dataclasses.fields(FAST)})
    storage = open_storage(s3_faults.uri, retry=policy)
    s3_faults.proxy.fail(None, status=503, code="SlowDown")

    with pytest.raises(TransientStorageError) as info:
        storage.read_bytes("shards/gen-00001.tar")

    message = str(info.value)
    assert "s3://synthrec-test/shards/gen-00001.tar" in message
    assert "after 4 attempts" in message and "SlowDown" in message
    assert s3_faults.endpoint in message and "retry later" in message
    assert s3_faults.proxy.count() == 4
    # between the 4 attempts, 3 jittered exponential backoffs, each within the policy's bounds
    bounds = [min(FAST.max_delay, FAST.base_delay * 2**retry) for retry in range(3)]
    assert len(policy.chosen) == 3 and all(0 <= d <= b for d, b in zip(policy.chosen, bounds, strict=True))


def test_s3_access_denied_is_a_permission_error_without_retries(s3_faults) -> None:
    storage = open_storage(s3_faults.uri, retry=FAST)
    s3_faults.proxy.fail(1, status=403, code="AccessDenied")
    with pytest.raises(StoragePermissionError, match=r"s3://synthrec-test/k: access denied.*credentials"):
        storage.write_bytes("k", b"v")
    assert s3_faults.proxy.count() == 1


def test_s3_missing_bucket_says_so(s3_bucket) -> None:
    storage = open_storage("s3://no-such-bucket/x/", retry=FAST)
    with pytest.raises(StorageError, match=r"bucket 'no-such-bucket' does not exist.*create it"):
        storage.write_bytes("k", b"v")


def test_s3_missing_credentials_say_what_to_set(s3_bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-role lookup on a laptop
    with pytest.raises(StoragePermissionError, match=r"no S3 credentials found.*AWS_ACCESS_KEY_ID"):
        open_storage(s3_bucket.uri, retry=FAST).read_bytes("k")


def test_retry_policy_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNTHREC_S3_ATTEMPTS", "7")
    monkeypatch.setenv("SYNTHREC_S3_BACKOFF_S", "0.2")
    monkeypatch.setenv("AWS_RETRY_MODE", "standard")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    assert RetryPolicy.from_env() == RetryPolicy(
        attempts=7, base_delay=0.2, botocore_mode="standard", botocore_attempts=2
    )
    monkeypatch.setenv("SYNTHREC_S3_ATTEMPTS", "many")
    with pytest.raises(StorageError, match="SYNTHREC_S3_ATTEMPTS"):
        RetryPolicy.from_env()


def test_unsupported_uris_are_rejected() -> None:
    with pytest.raises(StorageError, match="unsupported storage URI"):
        open_storage("gs://bucket/x")
