"""The toy world's trained models, loaded by the same code the worker stages use: the generator draws what
it is asked for (from names, from sentences, through img2img), the CLIP is imperfect in zero-shot but its
features separate the classes, the word-to-sentence model writes varied sentences with the class name.

Uses TRAINED models (``toy_world``): every check here is about what the models learned."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from synthrec.toyworld.builder import BUILDER_VERSION, NOTICE, ToyWorld, build_toy_world
from synthrec.toyworld.world import LABEL_CLASSES, detect
from tests.learning.pipeline import Runs

pytestmark = pytest.mark.slow

# Detector-judged class accuracy measured on the seed-0 world (synthrec/toyworld/README.md); chance is 1/16
# of the world classes. From "a photo of a <class>.": 65.6 % (the build's measure, in %); from the
# quickstart's LE sentences: 46.5 % (colour 92 %); Real Guidance from one real shot per class: 40.6 %.
GENERATOR_FROM_NAMES = 50.0
GENERATOR_FROM_SENTENCES = 0.35
GUIDED_CLASS_RIGHT = 0.25


def judged(images: list) -> list[str | None]:  # type: ignore[type-arg]
    from PIL import Image

    return [detect(im.resize((64, 64), Image.Resampling.BICUBIC)).name for im in images]


def test_the_build_is_reused_and_says_it_is_a_toy_world(toy_world: ToyWorld) -> None:
    before = toy_world.manifest_path.stat().st_mtime_ns
    again = build_toy_world(toy_world.root.parent)
    assert again == toy_world and toy_world.manifest_path.stat().st_mtime_ns == before
    manifest = toy_world.manifest()
    assert manifest["builder_version"] == BUILDER_VERSION and manifest["seed"] == 0
    assert manifest["notice"] == NOTICE and "not the paper's numbers" in NOTICE
    assert toy_world.root.name == f"v{BUILDER_VERSION}-seed0"
    assert "TOY WORLD" in (toy_world.root / "README.txt").read_text()


def test_the_generator_draws_the_class_it_is_asked_for(toy_world: ToyWorld, pipeline: Runs) -> None:
    # From "a photo of a <class>.": measured by the build (evaluate.evaluate_generator, 8 per class).
    quality = toy_world.manifest()["quality"]["generator"]
    assert quality["oracle_top1_from_name"] >= GENERATOR_FROM_NAMES, quality
    # From the LE sentences, through the generate stage (the quickstart's 32 per class, before the filter).
    seen = judged([i.image for i in pipeline.images])
    asked = [LABEL_CLASSES[i.label] for i in pipeline.images]
    right = sum(j == n for j, n in zip(seen, asked, strict=True)) / len(asked)
    colour = sum(j is not None and j.split()[0] == n.split()[0] for j, n in zip(seen, asked, strict=True))
    assert right >= GENERATOR_FROM_SENTENCES, right  # chance: 1/16 of the world classes
    assert colour / len(asked) >= 0.8


def test_the_generator_varies_its_drawings(pipeline: Runs) -> None:
    for label in range(len(LABEL_CLASSES)):
        drawn = [i.image for i in pipeline.images if i.label == label]
        pictures = np.stack([np.asarray(im, dtype=np.float32).reshape(-1) / 255 for im in drawn])
        spread = np.abs(pictures[:, None] - pictures[None]).mean(-1)
        assert spread[np.triu_indices(len(pictures), 1)].min() > 0.02  # no two of them alike


def test_real_guidance_starts_from_the_real_shot_and_keeps_its_class(pipeline: Runs) -> None:
    from synthrec.toyworld import measure
    from synthrec.workers.diffusion import center_square
    from synthrec.workers.realdata import decode_rgb

    guided = measure.generated_images(pipeline.storage, measure.GUIDED)
    shots = {
        i.label: np.asarray(
            center_square(decode_rgb(Path(i.meta["real_source"].removeprefix("file://")).read_bytes()), 64),
            dtype=np.float32,
        )
        for i in guided
    }
    assert sorted(shots) == list(range(len(LABEL_CLASSES)))
    seen = judged([i.image for i in guided])
    asked = [LABEL_CLASSES[i.label] for i in guided]
    right = sum(j == n for j, n in zip(seen, asked, strict=True)) / len(guided)
    assert right >= GUIDED_CLASS_RIGHT, right

    def distance(item: measure.Generated, shot: int) -> float:  # mean absolute pixel difference
        return float(np.abs(np.asarray(item.image.resize((64, 64)), dtype=np.float32) - shots[shot]).mean())

    own = np.mean([distance(i, i.label) for i in guided])
    other = np.mean([distance(i, (i.label + 1) % len(LABEL_CLASSES)) for i in guided])  # the next class's
    assert own < other, (own, other)


def test_clip_zero_shot_is_imperfect_but_its_features_separate_the_classes(toy_world: ToyWorld) -> None:
    from synthrec.toyworld.evaluate import evaluate_clip

    quality = evaluate_clip(toy_world)
    assert 30 <= quality["zero_shot_top1"] <= 85, quality  # chance is 12.5
    assert quality["linear_probe_top1"] >= quality["zero_shot_top1"] + 10, quality


def test_the_word_to_sentence_model_writes_varied_sentences_with_the_class_name(toy_world: ToyWorld) -> None:
    from synthrec.api import Decoding
    from synthrec.workers.prompts import LanguageEnhancer

    enhancer = LanguageEnhancer.load(toy_world.t5.as_uri(), decoding=Decoding())
    for index, name in enumerate(LABEL_CLASSES):
        sentences = enhancer.sentences(f"a {name}", 16, seed=index)
        assert sum(name in s for s in sentences) >= 12, sentences  # 92.7 % over all classes
        assert len(set(sentences)) >= 8, sentences


def test_the_manifest_records_what_the_build_measured(toy_world: ToyWorld) -> None:
    quality = toy_world.manifest()["quality"]
    assert set(quality) == {"clip", "sentences_percent", "generator"}
    json.dumps(quality)  # plain numbers
