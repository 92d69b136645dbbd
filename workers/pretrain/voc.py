"""PASCAL VOC folders (file:// or s3://) and the detection metric.

A VOC folder: ``ImageSets/Main/<split>.txt`` (one image id per line), ``Annotations/<id>.xml`` and
``JPEGImages/<id>.jpg``. Boxes are the devkit's 1-based inclusive pixel indices; like Detectron2's VOC
loader, ``xmin`` and ``ymin`` are shifted by one, giving [x0, y0, x1, y1) in pixels. An object whose
name is not one of the task's classes is skipped and counted; an image without any usable object is kept
for evaluation (it can hold false positives) and left out of training.

The metric is computed by pycocotools' COCOeval on the boxes (COCO's continuous box convention, no +1
pixel): ``ap50`` is COCO-style AP at IoU 0.5 (101-point interpolated precision), ``ap50_voc07`` the VOC2007
11-point AP, (1/11) sum over r in {0, 0.1, .., 1} of max precision at recall >= r, read from the same
COCOeval precision array (its entries are already the maximum precision to the right), as the paper's
Detectron2 protocol reports on VOC07 test; ``ap`` is AP averaged over IoU 0.5:0.95 and ``ap75`` at 0.75.
"Difficult" objects are marked ``iscrowd``: they count neither as positives nor, when matched, as false
positives (COCOeval matches crowd regions by intersection over the detection's area, slightly more
lenient than the devkit's IoU). Up to 100 detections per image are scored.
"""

from __future__ import annotations

import contextlib
import io
import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

from synthrec.storage import ObjectNotFound, Storage
from synthrec.workers.runtime import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VocObject:
    label: int  # 1..C (0 is the background class of the detector)
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
    difficult: bool


@dataclass(frozen=True)
class VocImage:
    uri: str
    image_id: str
    width: int
    height: int
    objects: tuple[VocObject, ...]


@dataclass
class VocSet:
    images: list[VocImage]
    skipped: dict[str, int] = field(default_factory=dict)


def read_voc(storage: Storage, split: str, classes: list[str]) -> VocSet:
    """The images and objects of one split of a VOC folder."""
    try:
        ids = [
            line.split()[0]
            for line in storage.read_bytes(f"ImageSets/Main/{split}.txt").decode().splitlines()
            if line.strip()
        ]
    except ObjectNotFound:
        raise DataError(
            f"{storage.url(f'ImageSets/Main/{split}.txt')} does not exist: not a VOC folder, or no split "
            f"{split!r}"
        ) from None
    index = {name: i + 1 for i, name in enumerate(classes)}
    images, skipped = [], {"unknown_class": 0}
    for image_id in ids:
        key = f"Annotations/{image_id}.xml"
        try:
            root = ET.fromstring(storage.read_bytes(key))
        except ObjectNotFound:
            raise DataError(f"{storage.url(key)} is missing (listed in {split}.txt)") from None
        except ET.ParseError as exc:
            raise DataError(f"{storage.url(key)} is not valid XML ({exc})") from None
        size = root.find("size")
        try:
            width, height = int(size.findtext("width")), int(size.findtext("height"))  # type: ignore[union-attr, arg-type]
        except (AttributeError, TypeError, ValueError):
            raise DataError(f"{storage.url(key)} has no <size> with width and height") from None
        objects = []
        for obj in root.iter("object"):
            name = (obj.findtext("name") or "").strip()
            if name not in index:
                skipped["unknown_class"] += 1
                continue
            bb = obj.find("bndbox")
            try:
                x0, y0, x1, y1 = (float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))  # type: ignore[union-attr, arg-type]
            except (AttributeError, TypeError, ValueError):
                raise DataError(f"{storage.url(key)}: an object {name!r} has no valid <bndbox>") from None
            box = (x0 - 1.0, y0 - 1.0, x1, y1)
            if box[2] <= box[0] or box[3] <= box[1]:
                raise DataError(f"{storage.url(key)}: object {name!r} has an empty box {box}")
            objects.append(VocObject(index[name], box, (obj.findtext("difficult") or "0").strip() == "1"))
        images.append(
            VocImage(storage.url(f"JPEGImages/{image_id}.jpg"), image_id, width, height, tuple(objects))
        )
    if skipped["unknown_class"]:
        log.warning(
            "%s %s: %d objects of classes outside the task's were skipped",
            storage.uri,
            split,
            skipped["unknown_class"],
        )
    return VocSet(images, skipped)


def voc_metrics(
    images: list[VocImage], detections: dict[str, list[tuple[list[float], int, float]]], classes: int
) -> dict[str, Any]:
    """AP metrics (module docstring) of ``detections`` (image id -> [(box xyxy, label 1..C, score)])."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    numeric = {img.image_id: n for n, img in enumerate(images, start=1)}
    gt: dict[str, Any] = {
        "images": [{"id": numeric[img.image_id], "width": img.width, "height": img.height} for img in images],
        "categories": [{"id": c} for c in range(1, classes + 1)],
        "annotations": [],
    }
    for img in images:
        for obj in img.objects:
            x0, y0, x1, y1 = obj.box
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": numeric[img.image_id],
                    "category_id": obj.label,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": int(obj.difficult),
                }
            )
    dets = [
        {
            "image_id": numeric[image_id],
            "category_id": int(label),
            "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
            "score": float(score),
        }
        for image_id, found in detections.items()
        for b, label, score in found
    ]
    out: dict[str, Any] = {"images": len(images), "objects": len(gt["annotations"]), "detections": len(dets)}
    if not dets or not gt["annotations"]:
        return {
            **out,
            "ap": 0.0,
            "ap50": 0.0,
            "ap75": 0.0,
            "ap50_voc07": 0.0,
            "per_class_ap50": [None] * classes,
        }
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and tables
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(dets), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    precision = evaluator.eval["precision"]  # [IoU 10, recall 101, class, area 4, maxDets 3]
    at50 = precision[0, :, :, 0, -1]  # IoU 0.5, all areas, 100 detections
    per_class = []
    voc07 = []
    for c in range(at50.shape[1]):
        column = at50[:, c]
        if (column < 0).all():  # no ground truth of this class
            per_class.append(None)
            continue
        per_class.append(round(100.0 * float(column.mean()), 3))
        voc07.append(float(column[::10].clip(min=0).mean()))
    stats = evaluator.stats
    return {
        **out,
        "ap": round(100.0 * float(stats[0]), 3),
        "ap50": round(100.0 * float(stats[1]), 3),
        "ap75": round(100.0 * float(stats[2]), 3),
        "ap50_voc07": round(100.0 * sum(voc07) / len(voc07), 3) if voc07 else 0.0,
        "per_class_ap50": per_class,
        "evaluator": "pycocotools COCOeval (bbox): ap50 101-point at IoU 0.5, ap50_voc07 VOC2007 11-point",
    }
