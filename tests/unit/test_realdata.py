"""Real data input: ImageFolder trees and WebDataset shards matched to the label space, the documented
policy for every kind of bad input, and the seeded few-shot sampler."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from synthrec.api import LabelClass, LabelSpace, RealData
from synthrec.api.labels import resolve_labels
from synthrec.storage import open_storage
from synthrec.workers.realdata import (
    RealImage,
    RealIndex,
    index_real_data,
    load_rgb,
    load_shots,
    sample_shots,
    shot_order,
)
from synthrec.workers.runtime import ConfigError, DataError

TINY = resolve_labels(LabelSpace(preset="tiny"))  # red circle, green square, blue triangle, yellow cross
# The EuroSAT release's class folders (EuroSAT_RGB), alphabetical = label order.
EUROSAT_RELEASE_FOLDERS = [
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
]


def png(colour: tuple[int, int, int] = (200, 10, 10)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(out, "PNG")
    return out.getvalue()


def jpeg(colour: tuple[int, int, int] = (10, 200, 10)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(out, "JPEG")
    return out.getvalue()


def tree(root: Path, files: dict[str, bytes]) -> str:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root.as_uri() + "/"


def full_tree(root: Path, per_class: int = 3, extra: dict[str, bytes] | None = None) -> str:
    files = {
        f"{folder}/{i:02d}.png": png()
        for folder in ("red_circle", "Green-Square", "blue triangle", "YELLOW_CROSS")
        for i in range(per_class)
    }
    return tree(root, {**files, **(extra or {})})


def test_imagefolder_folders_match_classes_by_normalised_name(tmp_path: Path) -> None:
    uri = full_tree(
        tmp_path, extra={"README.txt": b"x", "red_circle/notes.txt": b"y", "red_circle/sub/a.JPG": jpeg()}
    )
    index = index_real_data(RealData(uri=uri), TINY, open_storage)
    assert [len(index.by_class[c]) for c in range(4)] == [4, 3, 3, 3]
    assert index.skipped == {"outside_class_folder": 1, "not_image": 1}
    assert index.unmatched == []
    first = index.by_class[0][0]
    assert first == RealImage(0, uri + "red_circle/00.png")
    assert index.by_class[1][0].uri.endswith("Green-Square/00.png")


def test_tiny_real_dataset_indexes_for_the_tiny_preset(tiny_models) -> None:
    index = index_real_data(RealData(uri=(tiny_models.real / "train").as_uri()), TINY, open_storage)
    assert {c: len(v) for c, v in index.by_class.items()} == {0: 16, 1: 16, 2: 16, 3: 16}
    image = load_rgb(index.by_class[2][0], open_storage)
    assert image is not None and image.mode == "RGB" and image.size == (64, 64)


def test_extra_folders_are_counted_and_listed_not_fatal(tmp_path: Path) -> None:
    uri = full_tree(tmp_path, extra={"purple_star/0.png": png(), "purple_star/1.png": png()})
    index = index_real_data(RealData(uri=uri), TINY, open_storage)
    assert index.unmatched == ["purple_star"]
    assert index.skipped["unmatched"] == 2
    assert index.count() == 12


def test_missing_or_empty_class_folder_is_a_data_error_naming_the_class(tmp_path: Path) -> None:
    uri = full_tree(tmp_path)
    for path in (tmp_path / "YELLOW_CROSS").iterdir():
        path.unlink()
    (tmp_path / "YELLOW_CROSS" / "readme.md").write_text("no images here")
    with pytest.raises(DataError, match=r"1 of 4 classes have no images: 'yellow cross'"):
        index_real_data(RealData(uri=uri), TINY, open_storage)


def test_nothing_matching_at_all_says_what_was_found(tmp_path: Path) -> None:
    uri = tree(tmp_path, {"cat/0.png": png(), "dog/0.png": png()})
    with pytest.raises(DataError, match=r"no image matches any of the 4 classes \(found 'cat', 'dog'\)"):
        index_real_data(RealData(uri=uri), TINY, open_storage)


def test_two_folders_for_one_class_are_ambiguous_without_a_mapping(tmp_path: Path) -> None:
    uri = full_tree(tmp_path, extra={"Red Circle/9.png": png()})
    with pytest.raises(DataError, match="both match class index 0"):
        index_real_data(RealData(uri=uri), TINY, open_storage)


def test_class_mapping_maps_folders_and_may_merge_them(tmp_path: Path) -> None:
    uri = tree(
        tmp_path,
        {
            "a/0.png": png(),
            "a2/0.png": png(),
            "b/0.png": png(),
            "c/0.png": png(),
            "d/0.png": png(),
            "z/0.png": png(),
        },
    )
    mapping = {
        "a": "red circle",
        "a2": "red circle",
        "b": "green square",
        "c": "blue triangle",
        "d": "yellow cross",
    }
    index = index_real_data(RealData(uri=uri, class_mapping=mapping), TINY, open_storage)
    assert [len(index.by_class[c]) for c in range(4)] == [2, 1, 1, 1]
    assert index.unmatched == ["z"]


def test_class_mapping_to_an_unknown_class_is_a_config_error(tmp_path: Path) -> None:
    uri = full_tree(tmp_path)
    with pytest.raises(ConfigError, match="'purple star' are not class names"):
        index_real_data(RealData(uri=uri, class_mapping={"red_circle": "purple star"}), TINY, open_storage)


def test_head_names_match_when_names_do_not(tmp_path: Path) -> None:
    labels = resolve_labels(
        LabelSpace(
            classes=[LabelClass(name="Annual Crop", head_name="annual crop land"), LabelClass(name="Forest")]
        )
    )
    uri = tree(tmp_path, {"annual_crop_land/0.png": png(), "forest/0.png": png()})
    index = index_real_data(RealData(uri=uri), labels, open_storage)
    assert [len(index.by_class[c]) for c in range(2)] == [1, 1]


@pytest.mark.parametrize(
    ("preset", "folders"),
    [
        ("eurosat", EUROSAT_RELEASE_FOLDERS),
        ("cub200", ["001.Black_footed_Albatross", "141.Artic_Tern", "200.Common_Yellowthroat"]),
        ("caltech256", ["001.ak47", "015.bonsai-101", "257.clutter"]),
        ("imagenet_r", ["n01443537", "n12267677"]),
    ],
)
def test_the_releases_folder_names_match_a_presets_classes(
    tmp_path: Path, preset: str, folders: list[str]
) -> None:
    labels = resolve_labels(
        LabelSpace(preset=preset)
        if preset == "eurosat"
        else LabelSpace(
            preset=preset,
            subset=[c.name for c in resolve_labels(LabelSpace(preset=preset)).classes if c.folder in folders],
        )
    )
    uri = tree(tmp_path, {f"{folder}/0.png": png() for folder in folders})
    index = index_real_data(RealData(uri=uri), labels, open_storage)
    assert index.unmatched == []
    assert [index.by_class[c.index][0].uri for c in labels.classes] == [f"{uri}{f}/0.png" for f in folders]


def test_empty_image_files_follow_on_bad_image(tmp_path: Path) -> None:
    uri = full_tree(tmp_path, extra={"red_circle/empty.png": b""})
    index = index_real_data(RealData(uri=uri), TINY, open_storage)
    assert index.skipped == {"empty_file": 1} and len(index.by_class[0]) == 3
    with pytest.raises(DataError, match=r"empty\.png is an empty file \(onBadImage: fail\)"):
        index_real_data(RealData(uri=uri, on_bad_image="fail"), TINY, open_storage)


def test_corrupt_image_is_skipped_or_fails_per_policy(tmp_path: Path) -> None:
    good = jpeg()
    uri = tree(
        tmp_path, {"red_circle/truncated.jpg": good[: len(good) // 2], "red_circle/junk.png": b"not a png"}
    )
    for name in ("truncated.jpg", "junk.png"):
        image = RealImage(0, uri + "red_circle/" + name)
        assert load_rgb(image, open_storage, "skip") is None
        with pytest.raises(DataError, match=f"{name} cannot be read"):
            load_rgb(image, open_storage, "fail")


def _wds_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, fields in samples:
            for ext, data in fields.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_webdataset_labels_from_cls_json_index_or_name(tmp_path: Path) -> None:
    (tmp_path / "shards").mkdir()
    _wds_tar(
        tmp_path / "shards" / "real-000.tar",
        [
            ("s0", {"jpg": jpeg(), "cls": b"0"}),
            ("s1", {"png": png(), "json": json.dumps({"label": "green square"}).encode()}),
            ("s2", {"jpg": jpeg(), "json": json.dumps({"class": 2}).encode()}),
            ("s3", {"jpg": jpeg(), "json": json.dumps({"class": "Yellow_Cross"}).encode()}),
            ("s4", {"json": b'{"class": 1}'}),  # no image
            ("s5", {"jpg": jpeg()}),  # no label
            ("s6", {"jpg": jpeg(), "cls": b"purple star"}),
        ],
    )
    uri = (tmp_path / "shards").as_uri() + "/"
    index = index_real_data(RealData(uri=uri, format="webdataset"), TINY, open_storage)
    assert [len(index.by_class[c]) for c in range(4)] == [1, 1, 1, 1]
    assert index.skipped == {"no_image": 1, "no_label": 1, "unmatched": 1}
    assert index.unmatched == ["purple star"]
    assert index.by_class[1][0].uri == uri + "real-000.tar#s1.png"
    image = load_rgb(index.by_class[1][0], open_storage)
    assert image is not None and image.getpixel((0, 0)) == (200, 10, 10)


def test_webdataset_integer_label_outside_the_label_space_is_a_class_count_mismatch(tmp_path: Path) -> None:
    _wds_tar(tmp_path / "r.tar", [("a", {"jpg": jpeg(), "cls": b"7"})])
    with pytest.raises(DataError, match=r"label 7 is outside the label space's 0\.\.3"):
        index_real_data(RealData(uri=tmp_path.as_uri(), format="webdataset"), TINY, open_storage)


def test_webdataset_on_s3(s3_bucket, tmp_path: Path) -> None:
    _wds_tar(tmp_path / "r.tar", [(f"k{c}", {"jpg": jpeg(), "cls": str(c).encode()}) for c in range(4)])
    storage = open_storage(s3_bucket.uri + "real/")
    storage.upload_file(tmp_path / "r.tar", "train/r.tar")
    index = index_real_data(
        RealData(uri=s3_bucket.uri + "real/train/", format="webdataset"), TINY, open_storage
    )
    assert index.by_class[3][0].uri == "s3://synthrec-test/real/train/r.tar#k3.jpg"
    assert load_rgb(index.by_class[3][0], open_storage) is not None


def _index(per_class: dict[int, int]) -> RealIndex:
    return RealIndex(
        {c: [RealImage(c, f"file:///d/{c}/{i:03d}.png") for i in range(n)] for c, n in per_class.items()}
    )


def test_sample_shots_is_exact_deterministic_and_seeded() -> None:
    index = _index({0: 10, 1: 10, 2: 5})
    a = sample_shots(index, 4, seed=1)
    assert {c: len(v) for c, v in a.items()} == {0: 4, 1: 4, 2: 4}
    assert all(img.class_index == c for c, imgs in a.items() for img in imgs)
    assert sample_shots(index, 4, seed=1) == a  # same seed, same shots
    assert sample_shots(index, 4, seed=2) != a  # another seed, other shots
    # shuffling the listing changes nothing (sorted before the seeded shuffle)
    shuffled = RealIndex({c: list(reversed(v)) for c, v in index.by_class.items()})
    assert sample_shots(shuffled, 4, seed=1) == a
    # a class's shots do not depend on the other classes
    assert sample_shots(_index({0: 10}), 4, seed=1)[0] == a[0]
    # more shots extend fewer shots: 1-shot is the first of the 4-shot sample
    assert {c: v[:1] for c, v in a.items()} == sample_shots(index, 1, seed=1)
    assert sample_shots(index, 0, seed=1) == {0: [], 1: [], 2: []}


def test_sample_shots_names_the_class_that_is_too_small() -> None:
    with pytest.raises(DataError, match="class 2 has 5"):
        sample_shots(_index({0: 10, 1: 10, 2: 5}), 8, seed=0)


def test_load_shots_replaces_an_unreadable_shot_by_the_next_in_order(tmp_path: Path) -> None:
    uri = full_tree(tmp_path, per_class=4)
    index = index_real_data(RealData(uri=uri), TINY, open_storage)
    wanted = sample_shots(index, 2, seed=3)
    victim = wanted[0][0]
    Path(victim.uri.removeprefix("file://")).write_bytes(b"broken")
    loaded, bad = load_shots(index, 2, 3, open_storage)
    assert bad == 1
    assert [img for img, _ in loaded[0]] == [wanted[0][1], shot_order(index, 3)[0][2]]
    assert all(len(v) == 2 for v in loaded.values())
    with pytest.raises(DataError, match="cannot be read"):
        load_shots(index, 2, 3, open_storage, on_bad="fail")
