"""tiny:// references name the built-in tiny models and data: the worker runtime builds them on first use,
once, and resolves tiny:// to their file:// folders; storage itself knows nothing about them."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthrec.storage import StorageError, open_storage
from synthrec.tiny import TinyModels, references_tiny, resolve_uri
from synthrec.workers.modelref import resolve_model
from synthrec.workers.runtime import open_location


@pytest.fixture
def tiny_env(tiny_models: TinyModels, monkeypatch: pytest.MonkeyPatch) -> TinyModels:
    monkeypatch.setenv("SYNTHREC_TINY_MODELS", str(tiny_models.root))
    return tiny_models


@pytest.mark.parametrize("name", ["sd", "clip", "t5"])
def test_tiny_model_refs_resolve_to_the_built_folders(tiny_env: TinyModels, name: str) -> None:
    resolved = resolve_model(f"tiny://{name}")
    assert resolved.path == getattr(tiny_env, name)
    assert resolved.revision.startswith("tiny-v")


def test_tiny_uris_resolve_to_file_folders_without_building(tmp_path: Path) -> None:
    assert resolve_uri("tiny://real/train", tmp_path) == (tmp_path / "real" / "train").as_uri()
    assert resolve_uri("tiny://clip", tmp_path) == (tmp_path / "clip").as_uri()
    assert resolve_uri("s3://bucket/x/", tmp_path) == "s3://bucket/x/"
    assert list(tmp_path.iterdir()) == []


def test_tiny_real_data_opens_through_the_worker_runtime(tiny_env: TinyModels) -> None:
    storage = open_location("tiny://real/train")
    keys = [o.key for o in storage.list()]
    assert len(keys) == 64 and keys[0].startswith("blue_triangle/")
    assert storage.uri == tiny_env.real.joinpath("train").as_uri() + "/"


def test_storage_has_no_tiny_side_effect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNTHREC_TINY_MODELS", str(tmp_path / "tiny"))
    with pytest.raises(StorageError, match="tiny:// is the built-in demo data"):
        open_storage("tiny://real/train")
    assert not (tmp_path / "tiny").exists()


def test_a_worker_builds_the_tiny_models_on_first_use_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SYNTHREC_TINY_MODELS", raising=False)
    monkeypatch.setenv("SYNTHREC_CACHE", str(tmp_path))
    spec = {"generator": {"model": "tiny://sd"}, "data": {"test": {"uri": "tiny://real/test"}}}
    assert references_tiny(spec) and not (tmp_path / "tiny-models").exists()  # a reference builds nothing
    storage = open_location("tiny://real/test")
    assert TinyModels.at(tmp_path / "tiny-models").is_built()
    assert storage.uri == (tmp_path / "tiny-models" / "real" / "test").as_uri() + "/"
    manifest = tmp_path / "tiny-models" / "tiny-models.json"
    built = manifest.stat().st_mtime_ns
    resolved = resolve_model("tiny://clip")
    assert resolved.path == tmp_path / "tiny-models" / "clip"
    assert (resolved.path / "open_clip_config.json").is_file()
    assert manifest.stat().st_mtime_ns == built  # once
