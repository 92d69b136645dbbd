"""Model references resolve to local folders: file:// in place, s3:// downloaded once and verified, HF ids
through huggingface_hub (offline in tests: HF_HUB_OFFLINE=1 from tests/conftest.py)."""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from synthrec.storage import open_storage, upload_tree
from synthrec.workers.modelref import ModelRefError, ResolvedModel, default_cache_dir, resolve_model

FILES = {
    "model_index.json": b'{"_class_name": "Tiny"}',
    "unet/config.json": b'{"sample_size": 8}',
    "unet/diffusion_pytorch_model.safetensors": os.urandom(40_000),
    "tokenizer/vocab.json": b'{"a": 0}',
}


def _model_folder(root: Path, files: dict[str, bytes] = FILES) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _object_reads(proxy) -> int:
    """GET/HEAD requests for objects (a LIST is a GET with list-type=2 and does not count)."""
    return sum(1 for s in proxy.seen if s.method in ("GET", "HEAD") and "list-type=2" not in s.path)


@pytest.fixture
def s3_model(s3_faults, tmp_path: Path) -> str:
    """A small model folder uploaded to s3://synthrec-test/models/tiny/ (requests go through the proxy)."""
    upload_tree(open_storage(s3_faults.uri), _model_folder(tmp_path / "src"), "models/tiny")
    s3_faults.proxy.reset()
    return s3_faults.uri + "models/tiny/"


# ------------------------------------------------------------------------------------- file and names


def test_a_file_folder_resolves_in_place(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path / "m")
    resolved = resolve_model(f"file://{folder}")
    assert resolved == ResolvedModel(ref=resolved.ref, path=folder, revision=None, name=None)
    assert resolved.ref.kind == "file"


def test_a_missing_file_folder_says_what_to_check(tmp_path: Path) -> None:
    with pytest.raises(ModelRefError, match=rf"{tmp_path}/nope does not exist.*volume mounted.*s3://"):
        resolve_model(f"file://{tmp_path}/nope")


def test_a_file_instead_of_a_folder_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelRefError, match=r"weights\.bin is a file; give the folder"):
        resolve_model(f"file://{tmp_path}/weights.bin")


def test_builtin_names_need_allow_name() -> None:
    assert resolve_model("RN50", allow_name=True) == ResolvedModel(
        ref=resolve_model("RN50", allow_name=True).ref, path=None, revision=None, name="RN50"
    )
    with pytest.raises(ModelRefError, match="not a model reference"):
        resolve_model("RN50")


@pytest.mark.parametrize("ref", ["", "gs://bucket/model", "hf://just-a-name", "file://relative/path"])
def test_malformed_references_are_model_ref_errors(ref: str) -> None:
    with pytest.raises(ModelRefError):
        resolve_model(ref)


def test_default_cache_dir_follows_synthrec_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SYNTHREC_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c" / "models"
    monkeypatch.delenv("SYNTHREC_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "synthrec" / "models"


# ------------------------------------------------------------------------------------------- s3://


def test_an_s3_folder_is_downloaded_once_then_reused(s3_model: str, s3_faults, tmp_path: Path) -> None:
    cache = tmp_path / "cache"

    first = resolve_model(s3_model, cache_dir=cache)

    assert first.path is not None and first.path.is_relative_to(cache)
    assert _tree(first.path) == FILES
    assert first.revision is not None and len(first.revision) == 64
    assert _object_reads(s3_faults.proxy) >= len(FILES)

    s3_faults.proxy.reset()
    second = resolve_model(s3_model, cache_dir=cache)

    assert second == first
    assert _object_reads(s3_faults.proxy) == 0  # only the listing went out
    assert s3_faults.proxy.count(method="GET", path="list-type=2") == 1


def test_concurrent_resolvers_download_once(s3_model: str, s3_faults, tmp_path: Path) -> None:
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: resolve_model(s3_model, cache_dir=tmp_path), range(3)))
    assert results[0] == results[1] == results[2]
    assert _object_reads(s3_faults.proxy) == len(FILES)


def test_an_s3_key_that_cannot_be_a_local_path_is_rejected(s3_model: str, s3_faults, tmp_path: Path) -> None:
    s3_faults.client.put_object(Bucket=s3_faults.name, Key="models/tiny/win\\path.bin", Body=b"x")
    with pytest.raises(ModelRefError, match=r"backslash.*cannot be stored in a local folder"):
        resolve_model(s3_model, cache_dir=tmp_path)


def test_the_default_cache_is_under_synthrec_cache(
    s3_model: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SYNTHREC_CACHE", str(tmp_path / "sc"))
    resolved = resolve_model(s3_model)
    assert resolved.path is not None and resolved.path.is_relative_to(tmp_path / "sc" / "models")


def test_the_revision_is_the_same_on_every_machine(s3_model: str, tmp_path: Path) -> None:
    a = resolve_model(s3_model, cache_dir=tmp_path / "a")
    b = resolve_model(s3_model, cache_dir=tmp_path / "b")
    assert a.revision == b.revision and a.path != b.path


def test_a_changed_remote_folder_is_downloaded_again(s3_model: str, s3_faults, tmp_path: Path) -> None:
    first = resolve_model(s3_model, cache_dir=tmp_path / "cache")
    # Same size, new content: the ETag changes, so the cache must not be trusted.
    new_weights = os.urandom(40_000)
    s3_faults.client.put_object(
        Bucket=s3_faults.name, Key="models/tiny/unet/diffusion_pytorch_model.safetensors", Body=new_weights
    )

    second = resolve_model(s3_model, cache_dir=tmp_path / "cache")

    assert second.revision != first.revision
    assert second.path is not None
    assert (second.path / "unet/diffusion_pytorch_model.safetensors").read_bytes() == new_weights


@pytest.mark.parametrize("damage", ["same-size-garbage", "truncated", "deleted"])
def test_a_damaged_cache_is_detected_and_repaired(
    s3_model: str, s3_faults, tmp_path: Path, damage: str
) -> None:
    first = resolve_model(s3_model, cache_dir=tmp_path / "cache")
    assert first.path is not None
    weights = first.path / "unet/diffusion_pytorch_model.safetensors"
    time.sleep(0.01)  # a distinct mtime even on coarse-grained filesystems
    if damage == "same-size-garbage":
        weights.write_bytes(b"\0" * len(FILES["unet/diffusion_pytorch_model.safetensors"]))
    elif damage == "truncated":
        weights.write_bytes(b"\0" * 10)
    else:
        weights.unlink()
    s3_faults.proxy.reset()

    again = resolve_model(s3_model, cache_dir=tmp_path / "cache")

    assert _object_reads(s3_faults.proxy) > 0
    assert again.revision == first.revision
    assert again.path is not None and _tree(again.path) == FILES


def test_a_copied_cache_with_new_mtimes_is_verified_by_content(
    s3_model: str, s3_faults, tmp_path: Path
) -> None:
    first = resolve_model(s3_model, cache_dir=tmp_path / "cache")
    assert first.path is not None
    for path in first.path.rglob("*"):
        os.utime(path, ns=(1, 1))
    s3_faults.proxy.reset()

    again = resolve_model(s3_model, cache_dir=tmp_path / "cache")

    assert again == first
    assert _object_reads(s3_faults.proxy) == 0


def test_a_failed_download_leaves_no_cache_entry(s3_model: str, s3_faults, tmp_path: Path) -> None:
    s3_faults.proxy.fail(None, status=503, code="SlowDown", path="vocab.json")
    cache = tmp_path / "cache"

    with pytest.raises(ModelRefError, match=r"model 's3://.*/models/tiny/': download failed: .*vocab\.json"):
        resolve_model(s3_model, cache_dir=cache)
    assert s3_faults.proxy.count(path="vocab.json") == 4  # SYNTHREC_S3_ATTEMPTS from the fixture

    entries = [p.name for p in (cache / "s3").iterdir()]
    assert all(name.startswith(".") and name.endswith(".lock") for name in entries), entries

    s3_faults.proxy.reset()  # the service recovers: the next call downloads everything
    resolved = resolve_model(s3_model, cache_dir=cache)
    assert resolved.path is not None and _tree(resolved.path) == FILES


def test_the_cache_manifest_records_digests(s3_model: str, tmp_path: Path) -> None:
    resolved = resolve_model(s3_model, cache_dir=tmp_path / "cache")
    assert resolved.path is not None
    manifest = json.loads((resolved.path.parent / "manifest.json").read_text())
    assert manifest["source"] == s3_model
    assert manifest["revision"] == resolved.revision
    assert [f["key"] for f in manifest["files"]] == sorted(FILES)
    assert all(len(f["sha256"]) == 64 for f in manifest["files"])


def test_an_empty_s3_folder_is_an_error(s3_bucket, tmp_path: Path) -> None:
    with pytest.raises(ModelRefError, match=r"s3://synthrec-test/empty/ holds no objects; upload"):
        resolve_model(s3_bucket.uri + "empty/", cache_dir=tmp_path)


def test_an_unreachable_s3_folder_is_a_model_ref_error(s3_bucket, tmp_path: Path) -> None:
    with pytest.raises(ModelRefError, match=r"cannot list the folder: .*bucket 'nobucket' does not exist"):
        resolve_model("s3://nobucket/model/", cache_dir=tmp_path)


def test_storage_opts_reach_open_storage(s3_model: str, s3_faults, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    resolved = resolve_model(s3_model, cache_dir=tmp_path, storage_opts={"endpoint": s3_faults.endpoint})
    assert resolved.path is not None and _tree(resolved.path) == FILES


# ------------------------------------------------------------------------------------ Hugging Face


def test_an_unknown_hf_id_offline_fails_with_advice(tmp_path: Path) -> None:
    with pytest.raises(ModelRefError) as info:
        resolve_model("hf://synthrec-test/no-such-model@main", cache_dir=tmp_path)
    message = str(info.value)
    assert "hf://synthrec-test/no-such-model@main" in message
    assert "HF_HUB_OFFLINE" in message and "file:///" in message and "s3://" in message


def test_a_cached_hf_snapshot_resolves_offline_with_its_commit(tmp_path: Path) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "models--synthrec-test--tiny"
    snapshot = _model_folder(repo / "snapshots" / commit, {"config.json": b"{}"})
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)

    resolved = resolve_model("synthrec-test/tiny", cache_dir=tmp_path)

    assert resolved.path == snapshot
    assert resolved.revision == commit
    assert resolved.ref.kind == "hf" and resolved.ref.location == "synthrec-test/tiny"
