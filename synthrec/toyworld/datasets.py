"""The toy world's "real" data, drawn by the drawing program (so every label is exact):

- ``real/train/<class>/NNNN.png`` and ``real/test/<class>/NNNN.png``: ImageFolder sets for every world
  class (folder names use '_' for spaces, as synthrec's ImageFolder matching expects); the few-shot runs
  sample their shots from train, every run is scored on test. A label space that uses some of the
  classes (the demo's eight) simply leaves the other folders unmatched.
- ``voc/``: a detection transfer set in PASCAL VOC layout (``JPEGImages/``, ``Annotations/*.xml`` with
  one ``<object>`` and ``<bndbox>`` per drawn object, ``ImageSets/Main/{trainval,test}.txt``); 1 to 3
  objects per picture, boxes exact.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from synthrec.toyworld.training import NoProgress, Progress
from synthrec.toyworld.world import IMAGE_SIZE, WORLD_CLASSES, Scene, draw, random_scene


@dataclass(frozen=True)
class DataRecipe:
    train_per_class: int = 16
    test_per_class: int = 50
    voc_trainval: int = 200
    voc_test: int = 100


def folder_name(class_name: str) -> str:
    """'red circle' -> 'red_circle'."""
    return class_name.replace(" ", "_")


def build_real(
    out: Path, seed: int, recipe: DataRecipe | None = None, progress: Progress | None = None
) -> dict[str, Any]:
    import numpy as np

    recipe = recipe or DataRecipe()
    progress = progress or NoProgress()
    splits = {"train": recipe.train_per_class, "test": recipe.test_per_class}
    progress.start("real train/test sets", sum(splits.values()) * len(WORLD_CLASSES))
    for split, count in splits.items():
        for index, name in enumerate(WORLD_CLASSES):
            # one stream per (split, class): adding classes or images elsewhere changes nothing here
            rng = np.random.default_rng([seed, 401, 0 if split == "train" else 1, index])
            folder = out / split / folder_name(name)
            folder.mkdir(parents=True)
            for i in range(count):
                draw(rng, random_scene(rng, name)).save(folder / f"{i:04d}.png")
                progress.advance()
    return {"classes": list(WORLD_CLASSES), "per_class": splits, "recipe": asdict(recipe)}


def voc_annotation(filename: str, scene: Scene) -> str:
    """A PASCAL VOC annotation of ``scene`` (1-based pixel coordinates, inclusive, as VOC writes them)."""
    objects = "".join(
        f"""  <object>
    <name>{escape(thing.name)}</name>
    <pose>Unspecified</pose>
    <truncated>0</truncated>
    <difficult>0</difficult>
    <bndbox>
      <xmin>{thing.box[0] + 1}</xmin>
      <ymin>{thing.box[1] + 1}</ymin>
      <xmax>{thing.box[2]}</xmax>
      <ymax>{thing.box[3]}</ymax>
    </bndbox>
  </object>
"""
        for thing in scene.things
    )
    return f"""<annotation>
  <folder>toy-world</folder>
  <filename>{escape(filename)}</filename>
  <source><database>synthrec toy world (drawn)</database></source>
  <size><width>{scene.size}</width><height>{scene.size}</height><depth>3</depth></size>
  <segmented>0</segmented>
{objects}</annotation>
"""


def build_voc(
    out: Path, seed: int, recipe: DataRecipe | None = None, progress: Progress | None = None
) -> dict[str, Any]:
    import numpy as np

    recipe = recipe or DataRecipe()
    progress = progress or NoProgress()
    images, notes, sets = out / "JPEGImages", out / "Annotations", out / "ImageSets" / "Main"
    for folder in (images, notes, sets):
        folder.mkdir(parents=True)
    rng = np.random.default_rng([seed, 501])
    total = recipe.voc_trainval + recipe.voc_test
    progress.start("VOC detection set", total)
    ids: dict[str, list[str]] = {"trainval": [], "test": []}
    objects = 0
    for i in range(total):
        stem = f"{i:06d}"
        name = WORLD_CLASSES[int(rng.integers(len(WORLD_CLASSES)))]
        scene = random_scene(rng, name, others=int(rng.integers(0, 3)))
        draw(rng, scene).save(images / f"{stem}.jpg", quality=95)
        (notes / f"{stem}.xml").write_text(voc_annotation(f"{stem}.jpg", scene))
        ids["trainval" if i < recipe.voc_trainval else "test"].append(stem)
        objects += len(scene.things)
        progress.advance()
    for split, stems in ids.items():
        (sets / f"{split}.txt").write_text("".join(s + "\n" for s in stems))
    return {"images": {k: len(v) for k, v in ids.items()}, "objects": objects, "image_size": IMAGE_SIZE}
