"""The tiny offline models open with the real loaders the workers use, and are built deterministically.

The first run builds them (about 20 s on 2 cores) into pytest's cache; later runs reuse that build.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from synthrec.storage.uris import parse_model_ref
from synthrec.tiny import (
    BUILDER_VERSION,
    IMAGE_SIZE,
    MANIFEST_NAME,
    REAL_TEST_PER_CLASS,
    REAL_TRAIN_PER_CLASS,
    TINY_CLASSES,
    TinyModels,
    build_tiny_models,
    class_folder_name,
)

pytestmark = pytest.mark.slow  # the first run of the session builds the models


def _files(root: Path) -> dict[str, bytes]:
    """Every built file under the four component folders, by relative path."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for name in ("sd", "clip", "t5", "real")
        for p in sorted((root / name).rglob("*"))
        if p.is_file()
    }


def test_manifest_says_the_weights_are_random_and_describes_the_build(tiny_models: TinyModels) -> None:
    manifest = json.loads((tiny_models.root / MANIFEST_NAME).read_text())
    assert manifest["random_weights"] is True
    assert "RANDOM" in manifest["notice"] and "meaningless" in manifest["notice"]
    assert manifest["builder_version"] == BUILDER_VERSION and manifest["seed"] == 0
    assert manifest["classes"] == list(TINY_CLASSES)
    assert set(manifest["parameters"]) == {"sd.unet", "sd.vae", "sd.text_encoder", "clip", "t5"}
    assert all(n > 10_000 for n in manifest["parameters"].values())
    assert manifest["t5_training"]["final_loss"] < manifest["t5_training"]["first_loss"] / 3
    for name, rel in manifest["paths"].items():
        assert (tiny_models.root / rel).is_dir(), name
    assert "RANDOM" in (tiny_models.root / "README.txt").read_text()


def test_refs_are_file_uris_that_the_model_reference_parser_accepts(tiny_models: TinyModels) -> None:
    refs = tiny_models.as_refs()
    assert set(refs) == {"sd", "clip", "t5", "real", "root"}
    for name, ref in refs.items():
        parsed = parse_model_ref(ref)
        assert parsed.kind == "file" and Path(parsed.location) == getattr(tiny_models, name)


def test_stable_diffusion_text_to_image_makes_a_64px_image_per_prompt(tiny_models: TinyModels) -> None:
    import torch
    from diffusers import AutoPipelineForText2Image

    pipe = AutoPipelineForText2Image.from_pretrained(tiny_models.sd)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.safety_checker is None and pipe.config.requires_safety_checker is False
    images = pipe(
        ["a photo of a red circle.", "a photo of a blue triangle."],
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
    ).images
    assert [(im.size, im.mode) for im in images] == [((IMAGE_SIZE, IMAGE_SIZE), "RGB")] * 2
    assert images[0].tobytes() != images[1].tobytes()


def test_stable_diffusion_image_to_image_starts_from_a_real_image(tiny_models: TinyModels) -> None:
    import numpy as np
    import torch
    from diffusers import AutoPipelineForImage2Image
    from PIL import Image

    pipe = AutoPipelineForImage2Image.from_pretrained(tiny_models.sd)
    pipe.set_progress_bar_config(disable=True)
    init = Image.open(tiny_models.real / "train" / "red_circle" / "0000.png").convert("RGB")
    out = pipe(
        ["a photo of a red circle."],
        image=[init],
        strength=0.5,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert out.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0


def test_open_clip_encodes_images_and_texts_with_logit_scale_100(tiny_models: TinyModels) -> None:
    import open_clip
    import torch
    from PIL import Image

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tiny_models.clip}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tiny_models.clip}")
    model.eval()
    paths = sorted((tiny_models.real / "test").glob("*/0000.png"))
    images = torch.stack([preprocess(Image.open(p)) for p in paths])
    assert images.shape == (len(TINY_CLASSES), 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        image_features = model.encode_image(images, normalize=True)
        texts = tokenizer([f"a photo of a {c}." for c in TINY_CLASSES])
        text_features = model.encode_text(texts, normalize=True)
        probs = (model.logit_scale.exp() * image_features @ text_features.T).softmax(-1)
    assert image_features.shape == text_features.shape == (len(TINY_CLASSES), 32)
    assert model.logit_scale.exp().item() == pytest.approx(100.0, rel=1e-5)
    assert torch.allclose(probs.sum(-1), torch.ones(len(TINY_CLASSES)))


def test_t5_writes_sentences_about_the_class_it_is_given(tiny_models: TinyModels) -> None:
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models.t5)
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_models.t5)
    inputs = tokenizer(["a red circle"], return_tensors="pt")
    torch.manual_seed(0)
    ids = model.generate(**inputs, do_sample=True, top_k=50, num_return_sequences=20)
    sentences = tokenizer.batch_decode(ids, skip_special_tokens=True)
    # The paper's LE samples sentences; briefly trained, the tiny T5 mostly writes ones naming the class.
    assert sum("red circle" in s for s in sentences) >= 12, sentences
    assert len(set(sentences)) >= 5, sentences


def test_the_tiny_classes_are_the_tiny_presets_classes() -> None:
    from synthrec.presets import get_preset

    assert tuple(get_preset("tiny").names) == TINY_CLASSES


def test_real_dataset_is_an_image_folder_of_the_tiny_classes(tiny_models: TinyModels) -> None:
    from PIL import Image

    for split, count in (("train", REAL_TRAIN_PER_CLASS), ("test", REAL_TEST_PER_CLASS)):
        folders = sorted(p.name for p in (tiny_models.real / split).iterdir())
        assert folders == sorted(class_folder_name(c) for c in TINY_CLASSES)
        for class_name in TINY_CLASSES:
            files = sorted((tiny_models.real / split / class_folder_name(class_name)).glob("*.png"))
            assert len(files) == count
            images = [Image.open(f) for f in files]
            assert {(im.size, im.mode) for im in images} == {((IMAGE_SIZE, IMAGE_SIZE), "RGB")}
            assert len({im.tobytes() for im in images}) == count  # all different
    assert class_folder_name("red circle") == "red_circle"


def test_a_second_build_of_the_same_folder_is_a_noop(tiny_models: TinyModels) -> None:
    before = {p: p.stat().st_mtime_ns for p in tiny_models.root.rglob("*") if p.is_file()}
    again = build_tiny_models(tiny_models.root)
    assert again == tiny_models
    assert {p: p.stat().st_mtime_ns for p in tiny_models.root.rglob("*") if p.is_file()} == before


def test_an_incomplete_or_other_build_is_not_taken_as_built(tmp_path: Path, tiny_models: TinyModels) -> None:
    models = TinyModels.at(tmp_path)
    for name in ("sd", "clip", "t5", "real"):
        getattr(models, name).mkdir()
    assert not models.is_built()  # no manifest: an interrupted build
    (tmp_path / MANIFEST_NAME).write_text((tiny_models.root / MANIFEST_NAME).read_text())
    assert models.is_built()
    assert not models.is_built(seed=1)
    (tmp_path / "t5").rmdir()
    assert not models.is_built()


def test_builds_are_deterministic(tmp_path: Path, tiny_models: TinyModels) -> None:
    fresh = build_tiny_models(tmp_path / "again")
    ours, theirs = _files(fresh.root), _files(tiny_models.root)
    assert sorted(ours) == sorted(theirs)
    differing = sorted(name for name in ours if ours[name] != theirs[name])
    assert not differing, (
        f"{differing} differ between two builds with seed 0 (if you changed the builder, bump "
        "synthrec.tiny.BUILDER_VERSION so that cached builds are replaced)"
    )
