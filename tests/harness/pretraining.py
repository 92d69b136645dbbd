"""Drawn data for the pre-training and transfer tests (no downloads, no generator model).

- ``write_synthetic_dataset``: a SyntheticDataset output written by the real code: shards by the generate
  stage's shard writer (``.jpg`` + ``.json`` + ``.cls``, items in the generate stage's global order, so
  shards are class-contiguous as real ones), committed with the generate hash, then the real reduce stage
  (filter disabled) writes the manifest and the per-shard index files.
- ``write_imagefolder``: a drawn classification set (one folder per class).
- ``write_voc``: a drawn detection set in PASCAL VOC layout (JPEGImages, Annotations XML, ImageSets).
"""

from __future__ import annotations

import io
import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from synthrec import contract
from synthrec.api import SyntheticDatasetSpec
from synthrec.contract.layout import DatasetLayout
from synthrec.plan import dataset_task
from synthrec.plan.tasks import ResourceRef, dump_task
from synthrec.storage import commit_file, open_storage
from synthrec.workers import reduce as reduce_stage
from synthrec.workers.runtime import run_stage
from synthrec.workers.shardio import BackgroundShardWriter

CLASSES = ("red circle", "green square", "blue triangle", "yellow cross")
COLOURS = ((220, 40, 40), (40, 180, 60), (40, 70, 220), (230, 210, 40))


def draw(cls: int, rng: random.Random, size: int = 32) -> Image.Image:
    """A picture of class ``cls``: its colour and shape at a random place and scale, on a background of
    light stripes with a random angle, period and tint. The stripes make every image an instance of its
    own that survives cropping and colour jitter, which self-supervised learning needs to learn anything
    within a few dozen steps."""
    angle, period, phase = (
        rng.uniform(0, math.pi),
        rng.uniform(size / 6, size / 2),
        rng.uniform(0, 2 * math.pi),
    )
    tint = np.array([rng.randint(150, 250) for _ in range(3)], dtype=np.float64)
    y, x = np.mgrid[0:size, 0:size]
    wave = 0.5 + 0.5 * np.sin(2 * math.pi * (x * math.cos(angle) + y * math.sin(angle)) / period + phase)
    pixels = (0.55 + 0.45 * wave)[..., None] * tint
    img = Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")
    shape(ImageDraw.Draw(img), cls, rng, size)
    return img


def shape(
    draw_: Any, cls: int, rng: random.Random, size: int, box: tuple[int, int, int, int] | None = None
) -> tuple[int, int, int, int]:
    """Draw class ``cls`` in ``box`` (random when None); returns the box (x0, y0, x1, y1)."""
    if box is None:
        s = rng.randint(size // 3, size * 2 // 3)
        x, y = rng.randint(0, size - s - 1), rng.randint(0, size - s - 1)
        box = (x, y, x + s, y + s)
    x0, y0, x1, y1 = box
    fill = COLOURS[cls % len(COLOURS)]
    if cls % 4 == 0:
        draw_.ellipse(box, fill=fill)
    elif cls % 4 == 1:
        draw_.rectangle(box, fill=fill)
    elif cls % 4 == 2:
        draw_.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)
    else:
        w = (x1 - x0) // 3
        draw_.rectangle((x0 + w, y0, x1 - w, y1), fill=fill)
        draw_.rectangle((x0, y0 + w, x1, y1 - w), fill=fill)
    return box


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.getvalue()


class _Item:
    def __init__(self, key: str, cls: int) -> None:
        self.key, self.class_index = key, cls


def write_synthetic_dataset(
    root: Path, *, per_class: int = 32, shards: int = 4, size: int = 32, seed: int = 0
) -> tuple[str, dict[str, Any]]:
    """A 4-class dataset of ``per_class`` drawn images per class in ``shards`` shards; returns its URI and
    manifest."""
    root.mkdir(parents=True, exist_ok=True)
    out = root / "dataset"
    uri = out.as_uri() + "/"
    spec = SyntheticDatasetSpec.model_validate(
        {
            "labels": {"preset": "tiny"},
            "generator": {"model": "tiny://sd", "resolution": max(64, size)},
            "filter": {"enabled": False},
            "sharding": {"shards": shards},
            "output": {"uri": uri},
        }
    )
    resource = ResourceRef(kind="SyntheticDataset", name="drawn")
    generate_hash = dataset_task(spec, "reduce", resource).hashes["generate"]
    storage = open_storage(uri)
    items = [(f"c{c:05d}-p00000-i{i:05d}", c) for c in range(len(CLASSES)) for i in range(per_class)]
    rng = random.Random(seed)
    for s in range(shards):
        part = items[s * len(items) // shards : (s + 1) * len(items) // shards]
        path = root / f"shard-{s}.tar"
        writer = BackgroundShardWriter(
            path,
            key=lambda item: item.key,
            metadata=lambda item: {"class": item.class_index, "class_name": CLASSES[item.class_index]},
            label=lambda item: item.class_index,
        )
        writer.put(
            [_Item(k, c) for k, c in part], np.stack([np.asarray(draw(c, rng, size)) for _, c in part])
        )
        writer.close()
        commit_file(
            storage,
            path,
            DatasetLayout.shard(s),
            DatasetLayout.shard_marker(s),
            spec_hash=generate_hash,
            count=len(part),
        )
        path.unlink()
    task_file = root / "reduce-task.json"
    task_file.write_text(dump_task(dataset_task(spec, "reduce", resource)))
    import os

    previous = os.environ.get(contract.ENV_TERMINATION_LOG)
    os.environ[contract.ENV_TERMINATION_LOG] = str(root / "reduce.log")
    try:
        assert run_stage("reduce", reduce_stage.run, str(task_file), 0) == 0, (
            root / "reduce.log"
        ).read_text()
    finally:
        if previous is None:
            os.environ.pop(contract.ENV_TERMINATION_LOG, None)
        else:
            os.environ[contract.ENV_TERMINATION_LOG] = previous
    return uri, json.loads((out / "manifest.json").read_text())


def write_imagefolder(root: Path, *, per_class: int, size: int = 32, seed: int = 0) -> str:
    rng = random.Random(seed)
    for c, name in enumerate(CLASSES):
        folder = root / name.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (folder / f"{i:04d}.jpg").write_bytes(jpeg(draw(c, rng, size)))
    return root.as_uri() + "/"


VOC_NAMES = ("circle", "square")


def write_voc(root: Path, *, images: int, split: str, size: int = 64, seed: int = 0) -> str:
    """A VOC folder with 1-2 objects (circles and squares) per image; some are marked difficult."""
    rng = random.Random(seed)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids = []
    for n in range(images):
        image_id = f"{split}_{n:05d}"
        img = Image.new("RGB", (size, size), tuple(rng.randint(150, 235) for _ in range(3)))
        d = ImageDraw.Draw(img)
        objects = []
        hard = n % 3 == 2  # every third image has two objects, the second one marked difficult
        for k in range(2 if hard else rng.randint(1, 2)):
            cls = rng.randrange(len(VOC_NAMES))
            s = rng.randint(size // 4, size // 2 - 2)
            x = rng.randint(0, size // 2 - 1) if k == 0 else rng.randint(size // 2, size - s - 1)
            y = rng.randint(0, size - s - 1)
            box = shape(d, cls, rng, size, (x, y, x + s, y + s))
            objects.append((VOC_NAMES[cls], box, int(hard and k == 1)))
        img.save(root / "JPEGImages" / f"{image_id}.jpg", quality=92)
        xml = [
            f"<annotation><filename>{image_id}.jpg</filename><size><width>{size}</width><height>{size}</height><depth>3</depth></size>"
        ]
        for name, (x0, y0, x1, y1), difficult in objects:
            # VOC boxes are 1-based pixel indices, inclusive
            xml.append(
                f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
                f"<difficult>{difficult}</difficult><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
                f"<xmax>{x1 + 1}</xmax><ymax>{y1 + 1}</ymax></bndbox></object>"
            )
        xml.append("</annotation>")
        (root / "Annotations" / f"{image_id}.xml").write_text("".join(xml))
        ids.append(image_id)
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root.as_uri() + "/"
