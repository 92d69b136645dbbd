"""tiny:// references resolve to the built-in tiny models and data, built offline on first use."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthrec.storage import open_storage
from synthrec.storage.modelref import resolve_model
from synthrec.tiny import TinyModels


@pytest.fixture
def tiny_env(tiny_models: TinyModels, monkeypatch: pytest.MonkeyPatch) -> TinyModels:
    monkeypatch.setenv("SYNTHREC_TINY_MODELS", str(tiny_models.root))
    return tiny_models


@pytest.mark.parametrize("name", ["sd", "clip", "t5"])
def test_tiny_model_refs_resolve_to_the_built_folders(tiny_env: TinyModels, name: str) -> None:
    resolved = resolve_model(f"tiny://{name}")
    assert resolved.path == getattr(tiny_env, name)
    assert resolved.revision.startswith("tiny-v")


def test_tiny_real_data_opens_as_storage(tiny_env: TinyModels) -> None:
    storage = open_storage("tiny://real/train")
    keys = [o.key for o in storage.list()]
    assert len(keys) == 64 and keys[0].startswith("blue_triangle/")


def test_tiny_models_are_built_on_first_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SYNTHREC_TINY_MODELS", raising=False)
    monkeypatch.setenv("SYNTHREC_CACHE", str(tmp_path))
    assert not (tmp_path / "tiny-models").exists()
    resolved = resolve_model("tiny://clip")
    assert resolved.path == tmp_path / "tiny-models" / "clip"
    assert (resolved.path / "open_clip_config.json").is_file()
