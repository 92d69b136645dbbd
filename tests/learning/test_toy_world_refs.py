"""tiny://world/... references name the trained toy world: the worker runtime resolves them to the built
toy world's file:// folders (building it on first use), the random-weight tiny:// names stay what they were,
and the output says which of the two a run used.

Uses TRAINED models (``toy_world``) only to resolve into an existing build; nothing here trains."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthrec.storage.uris import URIError, parse_model_ref, parse_storage_uri
from synthrec.tiny.layout import references_random_tiny, references_tiny, references_toy_world, resolve_uri
from synthrec.toyworld.builder import BUILDER_VERSION, ToyWorld


@pytest.fixture
def world_env(toy_world: ToyWorld, monkeypatch: pytest.MonkeyPatch) -> ToyWorld:
    monkeypatch.setenv("SYNTHREC_TOY_WORLD", str(toy_world.root.parent))
    return toy_world


def test_world_uris_resolve_to_the_toy_world_build_without_building(tmp_path: Path) -> None:
    assert (
        resolve_uri("tiny://world/real/test/", world=tmp_path) == (tmp_path / "real" / "test").as_uri() + "/"
    )
    assert resolve_uri("tiny://world/sd", world=tmp_path) == (tmp_path / "sd").as_uri()
    assert (
        resolve_uri("tiny://sd", tmp_path / "tiny") == (tmp_path / "tiny" / "sd").as_uri()
    )  # random weights
    assert list(tmp_path.iterdir()) == []


def test_world_references_parse_and_bad_ones_say_what_exists() -> None:
    assert parse_model_ref("tiny://world/clip").location == "world/clip"
    assert parse_storage_uri("tiny://world/real/train").path == "world/real/train"
    with pytest.raises(URIError, match=r"tiny://world/sd, tiny://world/clip, tiny://world/t5"):
        parse_model_ref("tiny://world/vae")
    with pytest.raises(URIError, match="tiny://world/real/train"):
        parse_storage_uri("tiny://world/sd")


def test_a_spec_says_whether_it_uses_random_weights_or_the_toy_world() -> None:
    world = {"generator": {"model": "tiny://world/sd"}, "data": {"test": {"uri": "tiny://world/real/test"}}}
    random = {"generator": {"model": "tiny://sd"}}
    both = {**world, "backbone": {"model": "tiny://clip"}}
    assert references_toy_world(world) and not references_random_tiny(world) and references_tiny(world)
    assert references_random_tiny(random) and not references_toy_world(random)
    assert references_random_tiny(both) and references_toy_world(both)


def test_world_refs_resolve_through_the_worker_runtime(world_env: ToyWorld) -> None:
    from synthrec.workers.modelref import resolve_model
    from synthrec.workers.runtime import open_location

    for name in ("sd", "clip", "t5"):
        resolved = resolve_model(f"tiny://world/{name}")
        assert resolved.path == getattr(world_env, name)
        assert resolved.revision == f"toy-world-v{BUILDER_VERSION}-seed0"
    storage = open_location("tiny://world/real/test")
    assert storage.uri == (world_env.real / "test").as_uri() + "/"
    assert any(o.key.startswith("red_circle/") for o in storage.list())


def test_the_toy_worlds_detection_set_is_tiny_world_voc_and_only_where_a_voc_folder_is_read(
    world_env: ToyWorld,
) -> None:
    from synthrec.api.pretraining import VocData
    from synthrec.toyworld.world import WORLD_CLASSES
    from synthrec.workers.pretrain.voc import read_voc
    from synthrec.workers.runtime import open_location

    assert parse_storage_uri("tiny://world/voc/", tiny_set="voc").path == "world/voc"
    assert VocData.model_validate({"uri": "tiny://world/voc", "split": "test"}).split == "test"
    with pytest.raises(URIError, match="the random-weight demo has none"):
        parse_storage_uri("tiny://voc", tiny_set="voc")
    with pytest.raises(URIError, match="tiny://world/voc"):
        parse_storage_uri("tiny://world/real/train", tiny_set="voc")  # images without boxes
    with pytest.raises(URIError, match="tiny://world/real/train"):
        parse_storage_uri("tiny://world/voc")  # not an image folder of real data

    storage = open_location("tiny://world/voc")
    assert storage.uri == world_env.voc.as_uri() + "/"
    trainval = read_voc(storage, "trainval", list(WORLD_CLASSES))
    test = read_voc(storage, "test", list(WORLD_CLASSES))
    assert len(trainval.images) == 200 and len(test.images) == 100
    assert all(image.objects for image in trainval.images) and trainval.skipped == {"unknown_class": 0}
