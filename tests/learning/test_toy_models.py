"""The toy world's trained models, loaded by the same code the worker stages use: the generator draws what
it is asked for (from names, from sentences, through img2img), the CLIP is imperfect in zero-shot but its
features separate the classes, the word-to-sentence model writes varied sentences with the class name.

Uses TRAINED models (``toy_world``): every check here is about what the models learned."""

from __future__ import annotations

import json

import numpy as np
import pytest

from synthrec.toyworld.builder import BUILDER_VERSION, NOTICE, ToyWorld, build_toy_world
from synthrec.toyworld.world import LABEL_CLASSES, detect

pytestmark = pytest.mark.slow


def generator(world: ToyWorld, **kw: object):  # type: ignore[no-untyped-def]
    from synthrec.api import Generator

    return Generator.model_validate({"model": world.sd.as_uri(), "steps": 20, "resolution": 64, **kw})


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


def test_the_generator_draws_the_class_it_is_asked_for_through_the_generate_stage_loader(
    toy_world: ToyWorld,
) -> None:
    import torch

    from synthrec.workers.diffusion import load_pipelines

    pipes = load_pipelines(generator(toy_world), real_guidance=False)
    right = colour = 0
    for index, name in enumerate(LABEL_CLASSES):
        out = pipes.text2image(
            prompt=[f"a photo of a {name}.", f"a {name} on a wooden table.", f"a small {name} on the left."]
            * 2,
            height=64,
            width=64,
            num_inference_steps=20,
            guidance_scale=3.0,
            generator=[torch.Generator().manual_seed(100 * index + i) for i in range(6)],
        )
        seen = judged(out.images)
        right += sum(j == name for j in seen)
        colour += sum(j is not None and j.split()[0] == name.split()[0] for j in seen)
    # Measured on the seed-0 world: colours nearly always right, shapes mostly drawn as blobs (a known gap of
    # this generator, synthrec/toyworld/README.md); chance is 1/16 for the class, 1/4 for the colour.
    assert colour / (6 * len(LABEL_CLASSES)) >= 0.8
    assert right / (6 * len(LABEL_CLASSES)) >= 0.15


def test_the_generator_varies_its_drawings(toy_world: ToyWorld) -> None:
    import torch

    from synthrec.workers.diffusion import load_pipelines

    pipes = load_pipelines(generator(toy_world), real_guidance=False)
    out = pipes.text2image(
        prompt=["a photo of a blue cross."] * 6,
        num_inference_steps=20,
        guidance_scale=3.0,
        generator=[torch.Generator().manual_seed(i) for i in range(6)],
        output_type="np",
    )
    pictures = out.images.reshape(6, -1)
    spread = np.abs(pictures[:, None] - pictures[None]).mean(-1)
    assert spread[np.triu_indices(6, 1)].min() > 0.02  # no two of them alike


def test_real_guidance_starts_from_the_real_shot_and_keeps_its_class(toy_world: ToyWorld) -> None:
    import torch
    from PIL import Image

    from synthrec.toyworld.datasets import folder_name
    from synthrec.workers.diffusion import center_square, load_pipelines

    pipes = load_pipelines(generator(toy_world), real_guidance=True)
    shots, guided = [], []
    for index, name in enumerate(LABEL_CLASSES):
        shot = Image.open(toy_world.real / "train" / folder_name(name) / "0000.png").convert("RGB")
        start = center_square(shot, 64)
        out = pipes.image2image(
            prompt=[f"a photo of a {name}."] * 2,
            image=[start] * 2,
            strength=0.49,  # the paper's strength for 1 shot
            num_inference_steps=20,
            guidance_scale=3.0,
            generator=[torch.Generator().manual_seed(10 * index + i) for i in range(2)],
        )
        shots += [np.asarray(start, dtype=np.float32)] * 2
        guided += out.images
    asked = [n for n in LABEL_CLASSES for _ in range(2)]
    seen = judged(guided)
    colour = sum(j is not None and j.split()[0] == n.split()[0] for j, n in zip(seen, asked, strict=True))
    assert colour / len(guided) >= 0.75  # the colour survives; the shape is the generator's known gap

    def distance(to: list) -> float:  # type: ignore[type-arg]
        return float(
            np.mean(
                [np.abs(np.asarray(g, dtype=np.float32) - t).mean() for g, t in zip(guided, to, strict=True)]
            )
        )

    other = shots[2:] + shots[:2]  # the shot of the next class
    assert distance(shots) < distance(other)  # mean absolute pixel difference: nearer its own shot


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
