"""The toy world itself (no trained models needed): the drawing program, its oracle detector, the caption
grammar and the drawn real sets (ImageFolder and VOC)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from synthrec.toyworld import captions
from synthrec.toyworld.datasets import DataRecipe, build_real, build_voc, folder_name
from synthrec.toyworld.world import LABEL_CLASSES, WORLD_CLASSES, detect, draw_class, split_class


def test_the_detector_names_every_drawn_picture() -> None:
    rng = np.random.default_rng(1234)
    wrong = []
    for i in range(320):
        image, scene = draw_class(rng, WORLD_CLASSES[i % len(WORLD_CLASSES)])
        if detect(image).name != scene.main.name:
            wrong.append((scene.main.name, detect(image).name, scene))
    assert wrong == []


def test_the_detector_finds_nothing_on_a_bare_background() -> None:
    from PIL import Image

    assert detect(Image.new("RGB", (64, 64), (180, 175, 170))).name is None


def test_a_seed_draws_the_same_picture_and_another_seed_another() -> None:
    first = np.asarray(draw_class(np.random.default_rng(7), "blue cross")[0])
    again = np.asarray(draw_class(np.random.default_rng(7), "blue cross")[0])
    other = np.asarray(draw_class(np.random.default_rng(8), "blue cross")[0])
    assert (first == again).all() and not (first == other).all()


def test_the_label_space_needs_both_colour_and_shape() -> None:
    colours = [split_class(n)[0] for n in LABEL_CLASSES]
    shapes = [split_class(n)[1] for n in LABEL_CLASSES]
    assert len(set(LABEL_CLASSES)) == 8 and set(LABEL_CLASSES) <= set(WORLD_CLASSES)
    assert all(colours.count(c) == 2 for c in colours) and all(shapes.count(s) == 2 for s in shapes)


def test_an_unknown_class_is_refused_with_the_world_classes() -> None:
    with pytest.raises(ValueError, match=r"is not a toy-world class.*red circle"):
        split_class("purple star")


def test_sentences_always_contain_the_class_name_in_varied_contexts() -> None:
    rng = np.random.default_rng(0)
    sentences = [captions.sentence(rng, "green triangle") for _ in range(200)]
    assert all("green triangle" in s for s in sentences)
    assert len(set(sentences)) > 40


def test_web_captions_never_use_three_of_the_label_spaces_shape_names() -> None:
    rng = np.random.default_rng(0)
    for name in WORLD_CLASSES:
        said = " ".join(captions.web_caption(rng, name) for _ in range(500))
        assert not {"square", "triangle", "cross"} & set(said.replace(".", " ").split())
    circles = [captions.web_caption(rng, "blue circle") for _ in range(2000)]
    assert sum(" circle" in c for c in circles) > 0.3 * len(circles)


def test_the_real_sets_are_imagefolders_synthrec_indexes(tmp_path: Path) -> None:
    from synthrec.api import LabelSpace, RealData
    from synthrec.api.labels import resolve_labels
    from synthrec.storage import open_storage
    from synthrec.toyworld.measure import load_quickstart
    from synthrec.workers.realdata import index_real_data

    build_real(tmp_path, seed=0, recipe=DataRecipe(train_per_class=2, test_per_class=3))
    labels = resolve_labels(LabelSpace.model_validate(load_quickstart()[0]["spec"]["labels"]))
    index = index_real_data(RealData(uri=(tmp_path / "test").as_uri()), labels, open_storage)
    assert {c: len(v) for c, v in index.by_class.items()} == {c: 3 for c in range(len(LABEL_CLASSES))}
    assert len(index.unmatched) == len(WORLD_CLASSES) - len(LABEL_CLASSES)  # the world's other classes
    red_circles = sorted((tmp_path / "test" / folder_name("red circle")).glob("*.png"))
    from PIL import Image

    assert all(detect(Image.open(p)).name == "red circle" for p in red_circles)


def test_the_voc_set_boxes_every_drawn_object(tmp_path: Path) -> None:
    from PIL import Image

    info = build_voc(tmp_path, seed=3, recipe=DataRecipe(voc_trainval=12, voc_test=6))
    trainval = (tmp_path / "ImageSets" / "Main" / "trainval.txt").read_text().split()
    test = (tmp_path / "ImageSets" / "Main" / "test.txt").read_text().split()
    assert len(trainval) == 12 and len(test) == 6 and not set(trainval) & set(test)
    objects = 0
    for stem in trainval + test:
        root = ET.parse(tmp_path / "Annotations" / f"{stem}.xml").getroot()
        assert root.findtext("filename") == f"{stem}.jpg"
        image = Image.open(tmp_path / "JPEGImages" / f"{stem}.jpg")
        for obj in root.iter("object"):
            box = obj.find("bndbox")
            assert box is not None
            x0, y0, x1, y1 = (int(box.findtext(k) or 0) for k in ("xmin", "ymin", "xmax", "ymax"))
            assert 1 <= x0 < x1 <= 64 and 1 <= y0 < y1 <= 64  # VOC: 1-based, inclusive
            crop = image.crop((x0 - 1, y0 - 1, x1, y1))  # just the object, as a detector's box sees it
            assert detect(crop).colour == split_class(obj.findtext("name") or "")[0]
            objects += 1
    assert objects == info["objects"] > len(trainval) + len(test)  # some pictures hold several objects


def test_the_quickstart_uses_the_worlds_label_space_in_both_resources() -> None:
    from synthrec.toyworld.evaluate import ZERO_SHOT_TEMPLATES
    from synthrec.toyworld.measure import load_quickstart

    for resource in load_quickstart():
        labels = resource["spec"]["labels"]
        assert tuple(c["name"] for c in labels["classes"]) == LABEL_CLASSES
        assert tuple(labels["templates"]) == ZERO_SHOT_TEMPLATES


def test_the_generators_designed_latent_holds_each_shapes_outline_and_name() -> None:
    """The text-to-image model's latent (16 x 16 cells of 4 px, synthrec.toyworld.sd) carries the outline of
    the object in the channel of its shape: blown back up to 64 px, the coverage alone is recognisable."""
    from PIL import Image

    from synthrec.toyworld.sd import LATENT_CELL, designed_latent
    from synthrec.toyworld.world import SHAPES

    rng = np.random.default_rng(3)
    for shape in SHAPES:
        for size_word in ("medium", "large"):
            image, scene = draw_class(rng, f"blue {shape}", size_word=size_word)
            latent = designed_latent(np.asarray(image, dtype=np.float32) / 127.5 - 1, scene)
            coverage = latent[3:]
            assert coverage.sum((1, 2)).argmax() == SHAPES.index(shape)  # the shape's own channel
            cells = np.kron(coverage.sum(0) > coverage.max() / 2, np.ones((LATENT_CELL, LATENT_CELL)))
            silhouette = np.where(cells[..., None], (40, 80, 220), (200, 200, 200)).astype(np.uint8)
            assert detect(Image.fromarray(silhouette)).shape == shape, (shape, size_word)
