"""Deleting a resource's artifacts touches exactly what the resource wrote: its workers record every key
(write-ahead, one ledger per process, with the resource's uid) and the cleanup stage deletes those keys,
on S3 (moto) and file:// alike. Objects synthrec did not write survive; a bucket root, or a prefix that
holds another resource's ledger or lies inside another resource's output, is refused with nothing
deleted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from synthrec import contract
from synthrec.api import SyntheticDatasetSpec
from synthrec.contract.layout import WRITTEN_KEYS
from synthrec.contract.written import parse_written
from synthrec.plan import dataset_task
from synthrec.plan.tasks import ResourceRef, StorageTarget, cleanup_task
from synthrec.storage import RecordingStorage, Storage, StorageError, open_storage
from synthrec.storage.commit import COMMITS_DIR
from tests.harness.stages import run_task

UID = "0b9c4a52-5b3e-4c39-9d2e-1f4f6b0a7c11"
OTHER_UID = "7f0e2d4b-90a1-4f7e-8a53-6c2d1e9b3a40"


def ref(uid: str = UID, name: str = "ds") -> ResourceRef:
    return ResourceRef(kind="SyntheticDataset", name=name, namespace="team-a", uid=uid)


def spec(uri: str) -> SyntheticDatasetSpec:
    return SyntheticDatasetSpec.model_validate(
        {
            "labels": {"preset": "tiny"},
            "prompts": {"strategy": "basic"},
            "generator": {"model": "file:///models/sd"},
            "output": {"uri": uri},
        }
    )


@pytest.fixture(params=["file", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A team's prefix, on file:// or on S3 (moto)."""
    if request.param == "file":
        (tmp_path / "bucket").mkdir()
        return (tmp_path / "bucket").as_uri() + "/team/"
    bucket = request.getfixturevalue("s3_bucket")
    return bucket.uri + "team/"


def keys(uri: str) -> set[str]:
    return {info.key for info in open_storage(uri).list()}


def write_prompts(uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, resource: ResourceRef) -> None:
    code, summary = run_task(dataset_task(spec(uri), "prompts", resource), tmp_path / "tasks", monkeypatch)
    assert code == contract.EXIT_OK, summary


def clean(uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uid: str = UID) -> tuple[int, Any]:
    task = cleanup_task(ref(uid), StorageTarget(uri=uri))
    return run_task(task, tmp_path / "tasks", monkeypatch)


def test_a_cleanup_deletes_what_the_resource_wrote_and_nothing_else(
    root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = root + "ds/"
    storage = open_storage(uri)
    storage.write_bytes("notes.txt", b"the team's own notes")  # before the resource
    write_prompts(uri, tmp_path, monkeypatch, ref())
    storage.write_bytes("shards/by-hand.tar", b"x")  # beside its artifacts, later
    open_storage(root).write_bytes("elsewhere.txt", b"y")  # outside its prefix
    written = keys(uri)
    (ledger,) = [k for k in written if k.startswith(WRITTEN_KEYS)]
    doc = parse_written(storage.read_bytes(ledger), ledger)
    assert doc.resource.uid == UID and doc.stage == "prompts"
    # The marker's commit also wrote its pending record (synthrec.storage.commit), gone once committed.
    pending = [k for k in doc.keys if k.startswith(COMMITS_DIR)]
    # On S3 the prompts stage also records the model mirror (synthrec.workers.mirror); file:// models are
    # pinned in place.
    mirror = ["models/mirror.json"] if uri.startswith("s3://") else []
    artifacts = sorted(["prompts.done.json", "prompts.jsonl", "spec.json", *mirror])
    assert [k for k in doc.keys if k not in pending] == artifacts
    assert len(pending) == 1 and not set(pending) & written

    code, summary = clean(uri, tmp_path, monkeypatch)
    assert code == contract.EXIT_OK, summary
    assert (summary.deleted, summary.ledgers, summary.kept) == (len(artifacts), 1, 2)
    assert keys(uri) == {"notes.txt", "shards/by-hand.tar"}
    assert keys(root) == {"ds/notes.txt", "ds/shards/by-hand.tar", "elsewhere.txt"}
    # Run again (a retried pod): nothing left to delete, nothing else touched.
    code, summary = clean(uri, tmp_path, monkeypatch)
    assert code == contract.EXIT_OK and summary.deleted == 0
    assert keys(uri) == {"notes.txt", "shards/by-hand.tar"}


def test_a_local_run_without_a_uid_writes_no_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = (tmp_path / "out").as_uri() + "/"
    write_prompts(uri, tmp_path, monkeypatch, ResourceRef(kind="SyntheticDataset", name="ds"))
    assert keys(uri) == {"prompts.done.json", "prompts.jsonl", "spec.json"}


@pytest.mark.parametrize("where", ["same", "nested", "enclosing"])
def test_a_prefix_that_holds_another_resources_ledger_is_refused(
    root: str, where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = root + "ds/"
    write_prompts(uri, tmp_path, monkeypatch, ref())
    # Another resource wrote at the same prefix, one nested below it or one enclosing it: deleting our keys
    # could delete its data (it wrote the same spec.json, or keys under ours), so nothing is deleted.
    other = {"same": uri, "nested": uri + "sub/", "enclosing": root}[where]
    write_prompts(other, tmp_path, monkeypatch, ref(OTHER_UID, name="other"))
    before = keys(uri)
    code, summary = clean(uri, tmp_path, monkeypatch)
    assert code == contract.EXIT_CONFIG_ERROR and summary.error == "config"
    assert "another resource" in summary.message and f"uid {OTHER_UID}" in summary.message
    assert "team-a/other" in summary.message
    assert keys(uri) == before


def test_credentials_that_may_not_list_an_enclosing_folder_still_clean_up_their_own_prefix(
    s3_faults: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A team's key may list only below its prefix (the usual IAM policy): the enclosing folders it may not
    list are skipped, the ones it may list are still checked."""
    uri = s3_faults.uri + "team/ds/"
    write_prompts(uri, tmp_path, monkeypatch, ref())
    listing_the_bucket_root = "prefix=.synthrec%2Fwritten"
    s3_faults.proxy.fail(None, status=403, code="AccessDenied", method="GET", path=listing_the_bucket_root)
    code, summary = clean(uri, tmp_path, monkeypatch)
    assert code == contract.EXIT_OK, summary
    assert summary.deleted == 4 and keys(uri) == set()  # prompts' three artifacts and models/mirror.json
    assert s3_faults.proxy.count(method="GET", path=listing_the_bucket_root) == 1
    assert s3_faults.proxy.count(method="GET", path="prefix=team%2F.synthrec%2Fwritten") == 1


def test_a_bucket_root_is_refused(s3_bucket: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    open_storage(s3_bucket.uri).write_bytes("precious", b"z")
    code, summary = clean(s3_bucket.uri, tmp_path, monkeypatch)
    assert code == contract.EXIT_CONFIG_ERROR
    assert "root of bucket" in summary.message
    assert keys(s3_bucket.uri) == {"precious"}


def test_an_unreadable_ledger_stops_the_cleanup(
    root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = root + "ds/"
    write_prompts(uri, tmp_path, monkeypatch, ref())
    open_storage(uri).write_bytes(WRITTEN_KEYS + "planted.json", b"{not json")
    before = keys(uri)
    code, summary = clean(uri, tmp_path, monkeypatch)
    assert code == contract.EXIT_CONFIG_ERROR and "cannot be told whose keys" in summary.message
    assert keys(uri) == before


class FailingWrites(Storage):
    """A storage whose object writes fail (the ledger's own writes go through)."""

    def __init__(self, inner: Storage, ledger: str) -> None:
        self.inner, self.ledger, self.uri = inner, ledger, inner.uri

    def write_bytes(self, key: str, data: bytes) -> None:
        if key != self.ledger:
            raise StorageError(f"cannot write {key}: injected")
        self.inner.write_bytes(key, data)

    def upload_file(self, local_path: Any, key: str) -> None:
        raise StorageError("injected")

    def child(self, prefix: str) -> Storage:
        return self.inner.child(prefix)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def read_bytes(self, key: str, **kw: Any) -> bytes:
        return self.inner.read_bytes(key, **kw)

    def open_stream(self, key: str) -> Any:
        return self.inner.open_stream(key)

    def download_file(self, key: str, local_path: Any) -> None:
        self.inner.download_file(key, local_path)

    def list(self, prefix: str = "") -> Any:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def sha256(self, key: str) -> str:
        return self.inner.sha256(key)


def test_keys_are_recorded_before_they_are_written_also_through_child_storages(tmp_path: Path) -> None:
    inner = open_storage((tmp_path / "out").as_uri() + "/")
    ledger = WRITTEN_KEYS + "t.json"
    recording = RecordingStorage(FailingWrites(inner, ledger), ledger, lambda ks: "\n".join(ks).encode())
    with pytest.raises(StorageError):
        recording.write_bytes("a.json", b"1")
    assert inner.read_bytes(ledger) == b"a.json"  # recorded although the write failed
    assert not inner.exists("a.json")
    recording = RecordingStorage(inner, ledger, lambda ks: "\n".join(ks).encode())
    recording.write_bytes("a.json", b"1")
    recording.child("runs/r1/").write_bytes("metrics.json", b"{}")
    recording.write_bytes("a.json", b"2")  # a key is recorded once
    assert inner.read_bytes(ledger) == b"a.json\nruns/r1/metrics.json"
    assert inner.read_bytes("runs/r1/metrics.json") == b"{}"
    with recording.open_stream("runs/r1/metrics.json") as stream:  # reads pass through (a streamed shard)
        assert stream.read() == b"{}"
    # Backend specifics read through, but a way of writing it does not record is never passed through.
    assert recording.root == inner.root  # type: ignore[attr-defined]
    inner.write_if_absent = inner.write_bytes  # type: ignore[attr-defined]  # a backend's own writer
    with pytest.raises(AttributeError, match="does not record 'write_if_absent'"):
        recording.write_if_absent("b.json", b"1")  # type: ignore[attr-defined]
