"""What `synthrec run` accepts before anything runs: the storage root and the resources of the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthrec.local import RunError, load_resources, select, storage_root, uses_tiny_models, uses_toy_world

REPO = Path(__file__).resolve().parents[2]


def test_storage_defaults_to_synthrec_out_in_the_current_folder(tmp_path: Path) -> None:
    assert storage_root(None, cwd=tmp_path) == (tmp_path / "synthrec-out").as_uri() + "/"
    assert storage_root("out/here", cwd=tmp_path) == (tmp_path / "out" / "here").as_uri() + "/"
    assert storage_root("s3://bucket/prefix") == "s3://bucket/prefix/"
    assert storage_root("spec") is None  # each resource keeps its own spec.output.uri


@pytest.mark.parametrize(
    ("value", "message"),
    [("tiny://real/x", "tiny:// is built-in read-only data"), ("s3://B_ad/x", "--storage s3://B_ad/x")],
)
def test_unusable_storage_uris_are_refused(value: str, message: str) -> None:
    with pytest.raises(RunError, match=message):
        storage_root(value)


def test_duplicate_names_of_one_kind_are_refused(tmp_path: Path) -> None:
    text = (REPO / "examples" / "tiny-mechanics.yaml").read_text()
    first = text.split("---\n")[0]
    path = tmp_path / "twice.yaml"
    path.write_text(first + "---\n" + first)
    with pytest.raises(RunError, match="SyntheticDataset 'tiny-shapes' is already defined in document 1"):
        load_resources(path)


def test_only_selects_by_name_and_the_examples_say_which_built_in_models_they_use() -> None:
    resources = load_resources(REPO / "examples" / "tiny-mechanics.yaml")
    assert [r.metadata.name for r in select(resources, ["tiny-shapes-ct"])] == ["tiny-shapes-ct"]
    assert uses_tiny_models(resources) and not uses_toy_world(resources)
    quickstart = load_resources(REPO / "examples" / "quickstart.yaml")
    assert uses_toy_world(quickstart) and not uses_tiny_models(quickstart)  # trained, not random weights
    eurosat = load_resources(REPO / "examples" / "eurosat-zero-shot.yaml")
    assert not uses_tiny_models(eurosat) and not uses_toy_world(eurosat)
