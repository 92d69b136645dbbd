"""What a built toy world can do, measured directly on its models (recorded in the manifest, printed by
``python -m synthrec.toyworld``); the pipeline-level numbers come from ``synthrec.toyworld.measure``.

- CLIP zero-shot top-1 on the real test set of the label classes, and the top-1 of a linear head fitted
  on the 16 real training pictures per class (what the features allow);
- the generator's accuracy judged by the world's detector (``world.detect``) on pictures drawn from
  "a photo of a <class>." and from the word-to-sentence model's sentences;
- how many of the word-to-sentence model's sentences contain the class name, and how many differ.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthrec.toyworld.training import NoProgress, Progress
from synthrec.toyworld.world import LABEL_CLASSES, detect, split_class

if TYPE_CHECKING:
    from synthrec.toyworld.builder import ToyWorld

ZERO_SHOT_TEMPLATES = ("a photo of a {c}.", "a drawing of a {c}.")


def real_images(folder: Path, classes: tuple[str, ...] = LABEL_CLASSES) -> tuple[list[Any], list[int]]:
    from PIL import Image

    from synthrec.toyworld.datasets import folder_name

    images, labels = [], []
    for index, name in enumerate(classes):
        for path in sorted((folder / folder_name(name)).glob("*.png")):
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
            labels.append(index)
    return images, labels


def load_clip(folder: Path) -> tuple[Any, Any, Any]:
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    return model.eval(), preprocess, open_clip.get_tokenizer(f"local-dir:{folder}")


def clip_features(model: Any, preprocess: Any, images: list[Any]) -> Any:
    import torch

    with torch.no_grad():
        batch = torch.stack([preprocess(im) for im in images])
        return torch.nn.functional.normalize(model.encode_image(batch), dim=-1)


def text_head(model: Any, tokenizer: Any, classes: tuple[str, ...] = LABEL_CLASSES) -> Any:
    import torch

    rows = []
    with torch.no_grad():
        for name in classes:
            emb = model.encode_text(tokenizer([t.format(c=name) for t in ZERO_SHOT_TEMPLATES]))
            rows.append(
                torch.nn.functional.normalize(torch.nn.functional.normalize(emb, dim=-1).mean(0), dim=0)
            )
    return torch.stack(rows)


def evaluate_clip(world: ToyWorld) -> dict[str, float]:
    import torch

    model, preprocess, tokenizer = load_clip(world.clip)
    test, test_labels = real_images(world.real / "test")
    train, train_labels = real_images(world.real / "train")
    test_f, train_f = clip_features(model, preprocess, test), clip_features(model, preprocess, train)
    head = text_head(model, tokenizer)
    y_test, y_train = torch.tensor(test_labels), torch.tensor(train_labels)
    zero_shot = ((test_f @ head.T).argmax(1) == y_test).float().mean().item()
    # a linear head on the frozen features, fitted on the real training pictures: what the features allow
    weight = torch.nn.Parameter(head.clone() * 10)
    bias = torch.nn.Parameter(torch.zeros(len(LABEL_CLASSES)))
    optimizer = torch.optim.AdamW([weight, bias], lr=0.05)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(train_f @ weight.T + bias, y_train)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        probe = ((test_f @ weight.T + bias).argmax(1) == y_test).float().mean().item()
    return {"zero_shot_top1": round(100 * zero_shot, 1), "linear_probe_top1": round(100 * probe, 1)}


def sample_sentences(folder: Path, name: str, count: int, seed: int) -> list[str]:
    """Sentences for "a <name>" sampled as the prompts stage samples them (top-k 50)."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForSeq2SeqLM.from_pretrained(str(folder)).eval()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        ids = model.generate(
            **tokenizer([f"a {name}"], return_tensors="pt"),
            do_sample=True,
            top_k=50,
            max_new_tokens=20,
            num_return_sequences=count,
        )
    return [s.strip() for s in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def evaluate_generator(world: ToyWorld, per_class: int = 8, steps: int = 20) -> dict[str, float]:
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(world.sd))
    pipe.set_progress_bar_config(disable=True)
    results: dict[str, float] = {}
    for kind in ("name", "sentences"):
        right = colour = 0
        for index, name in enumerate(LABEL_CLASSES):
            if kind == "name":
                prompts = [f"a photo of a {name}."] * per_class
            else:
                prompts = sample_sentences(world.t5, name, per_class, seed=index)
            images = pipe(
                prompts,
                height=64,
                width=64,
                num_inference_steps=steps,
                guidance_scale=3.0,
                generator=[torch.Generator().manual_seed(1000 * index + i) for i in range(per_class)],
            ).images
            seen = [detect(im) for im in images]
            right += sum(d.name == name for d in seen)
            colour += sum(d.colour == split_class(name)[0] for d in seen)
        total = per_class * len(LABEL_CLASSES)
        results[f"oracle_top1_from_{kind}"] = round(100 * right / total, 1)
        results[f"oracle_colour_from_{kind}"] = round(100 * colour / total, 1)
    return results


def evaluate_sentences(world: ToyWorld, per_class: int = 12) -> dict[str, float]:
    with_name = distinct = total = 0
    for index, name in enumerate(LABEL_CLASSES):
        sentences = sample_sentences(world.t5, name, per_class, seed=index)
        with_name += sum(name in s for s in sentences)
        distinct += len(set(sentences))
        total += len(sentences)
    return {
        "with_class_name": round(100 * with_name / total, 1),
        "distinct": round(100 * distinct / total, 1),
    }


def evaluate_world(world: ToyWorld, progress: Progress | None = None) -> dict[str, Any]:
    progress = progress or NoProgress()
    progress.start("checking the models", 3)
    out: dict[str, Any] = {"clip": evaluate_clip(world)}
    progress.advance()
    out["sentences_percent"] = evaluate_sentences(world)
    progress.advance()
    out["generator"] = evaluate_generator(world)
    progress.advance()
    return out
