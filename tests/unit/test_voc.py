"""PASCAL VOC folders and the detection metric (synthrec.workers.pretrain.voc), on a drawn VOC set."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthrec.storage import open_storage
from synthrec.workers.pretrain.voc import VocImage, VocObject, read_voc, voc_metrics
from synthrec.workers.runtime import DataError
from tests.harness.pretraining import VOC_NAMES, write_voc


@pytest.fixture
def voc(tmp_path: Path):
    uri = write_voc(tmp_path / "voc", images=6, split="test", seed=5)
    return read_voc(open_storage(uri), "test", list(VOC_NAMES))


def test_voc_boxes_become_zero_based_pixels_and_labels_start_at_one(tmp_path: Path) -> None:
    root = tmp_path / "v"
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "ImageSets" / "Main" / "val.txt").write_text("a\n")
    (root / "Annotations" / "a.xml").write_text(
        "<annotation><size><width>50</width><height>40</height></size>"
        "<object><name>square</name><difficult>1</difficult><bndbox><xmin>11</xmin><ymin>6</ymin>"
        "<xmax>30</xmax><ymax>20</ymax></bndbox></object>"
        "<object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>"
        "</annotation>"
    )
    found = read_voc(open_storage(root.as_uri() + "/"), "val", list(VOC_NAMES))
    (image,) = found.images
    assert (image.width, image.height, image.uri.endswith("JPEGImages/a.jpg")) == (50, 40, True)
    (obj,) = image.objects
    assert obj.label == 2 and obj.box == (10.0, 5.0, 30.0, 20.0) and obj.difficult
    assert found.skipped == {"unknown_class": 1}
    with pytest.raises(DataError, match="no split 'train'"):
        read_voc(open_storage(root.as_uri() + "/"), "train", list(VOC_NAMES))


def test_ground_truth_as_detections_scores_100_and_misses_score_0(voc) -> None:
    perfect = {
        img.image_id: [(list(o.box), o.label, 0.9) for o in img.objects if not o.difficult]
        for img in voc.images
    }
    m = voc_metrics(voc.images, perfect, len(VOC_NAMES))
    assert (m["ap50"], m["ap50_voc07"], m["ap"], m["ap75"]) == (100.0, 100.0, 100.0, 100.0)
    shifted = {
        i: [([b[0] + 100, b[1] + 100, b[2] + 100, b[3] + 100], label, s) for b, label, s in found]
        for i, found in perfect.items()
    }
    assert voc_metrics(voc.images, shifted, len(VOC_NAMES))["ap50"] == 0.0
    assert voc_metrics(voc.images, {}, len(VOC_NAMES))["ap50"] == 0.0


def test_difficult_objects_are_neither_needed_nor_false_positives(voc) -> None:
    with_difficult = [img for img in voc.images if any(o.difficult for o in img.objects)]
    assert with_difficult, "the drawn set marks some objects difficult"
    # detect every object, difficult ones with the HIGHEST scores: counted as false positives they would
    # come first in the ranking and lower the AP
    found = {
        img.image_id: [(list(o.box), o.label, 0.99 if o.difficult else 0.5) for o in img.objects]
        for img in voc.images
    }
    assert voc_metrics(voc.images, found, len(VOC_NAMES))["ap50"] == 100.0


def test_the_voc07_metric_is_the_11_point_average_of_the_interpolated_precision() -> None:
    # one class, two objects; ranked detections: hit, miss, hit -> precision 1 up to recall 0.5, then 2/3
    images = [
        VocImage(
            "file:///a.jpg",
            "a",
            100,
            100,
            (VocObject(1, (0, 0, 10, 10), False), VocObject(1, (50, 50, 60, 60), False)),
        )
    ]
    found = {"a": [([0, 0, 10, 10], 1, 0.95), ([80, 80, 90, 90], 1, 0.9), ([50, 50, 60, 60], 1, 0.8)]}
    m = voc_metrics(images, found, 1)
    assert m["ap50_voc07"] == pytest.approx(100 * (6 * 1.0 + 5 * 2 / 3) / 11, abs=1e-3)
    assert m["ap50"] == pytest.approx(100 * (51 * 1.0 + 50 * 2 / 3) / 101, abs=1e-3)
