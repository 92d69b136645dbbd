"""Sets of resources that reproduce a table of the paper, written from the label presets rather than copied
by hand: ``table1`` gives, per Table 1 dataset, the paper's zero-shot recipe (Language Enhancement ->
text-to-image -> CLIP Filter -> Classifier Tuning with soft targets) as one SyntheticDataset and one
RecognitionExperiment per backbone (RN50 and ViT-B/16, Table 1's two columns, both tuned on the same
RN50-filtered images as in the official code).

Pure: options in, file names and texts out (``synthrec scaffold`` writes them; a test checks that the
committed ``examples/table1/`` is exactly what the defaults give).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from synthrec.api.base import API_VERSION

BACKBONES = {"RN50": ("RN50", "rn50"), "ViT-B/16": ("ViT-B-16", "vit-b16")}  # Table 1 column -> open_clip


@dataclass(frozen=True)
class Table1Options:
    data: str = "s3://datasets/"  # <data><preset>/test/ holds each dataset's test split
    output: str = "s3://synthrec/"  # datasets/ and experiments/ go under it
    credentials_secret: str | None = "synthrec-s3"
    generator: str = "hf://stabilityai/stable-diffusion-2-1-base"
    steps: int = 50
    guidance_scale: float = 7.5
    images_per_class: int = 2000  # the paper's: 200 sentences x 10 images
    keep_per_class: int = 800
    images_per_shard: int = 4000
    backbones: Sequence[str] = ("RN50", "ViT-B/16")
    seeds: Sequence[int] = field(default_factory=lambda: (1, 2, 3))


def table1(options: Table1Options | None = None) -> dict[str, str]:
    """File name -> YAML text (or README.md text), in Table 1's row order."""
    from synthrec.presets import TABLE1, get_preset

    o = options or Table1Options()
    for backbone in o.backbones:
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; Table 1 has {', '.join(BACKBONES)}")
    files: dict[str, str] = {}
    rows = []
    for number, (preset, task, rn50, vit) in enumerate(TABLE1, start=1):
        labels = get_preset(preset)
        slug = preset.replace("_", "-")
        name = f"table1-{slug}"
        classes = len(labels.classes)
        generated = classes * o.images_per_class
        shards = max(1, min(10_000, math.ceil(generated / o.images_per_shard)))
        baseline = {"RN50": rn50, "ViT-B/16": vit}
        header = [
            f"Table 1, {labels.title} ({task}, {classes} classes): the paper's zero-shot CLIP top-1 is "
            + ", ".join(f"{b} {baseline[b]:.2f}" for b in o.backbones)
            + ".",
            *_SPLIT_NOTES.get(preset, ()),
            f"{generated:,} images generated ({classes} x {o.images_per_class}), "
            f"{o.keep_per_class} per class kept by the CLIP Filter.",
            "Written by `synthrec scaffold table1`: change its options and write again rather than edit.",
        ]
        docs = [_dataset(o, name, preset, shards)]
        docs += [_experiment(o, name, preset, backbone) for backbone in o.backbones]
        body = "---\n".join(yaml.dump(d, Dumper=_Dumper, sort_keys=False, width=110) for d in docs)
        header_text = "".join(f"# {line}\n" for line in header)
        files[f"{number:02d}-{slug}.yaml"] = header_text + body
        rows.append((number, labels.title, task, classes, rn50, vit, f"{number:02d}-{slug}.yaml"))
    files["README.md"] = _readme(o, rows)
    return files


# Where the test split behind a baseline is not the dataset's obvious one (method spec §1.7).
_SPLIT_NOTES: dict[str, tuple[str, ...]] = {
    "eurosat": (
        "The baselines are on CoOp's 8,100-image EuroSAT test split (split_zhou_EuroSAT.json), in the",
        "release's folders (AnnualCrop/ ... SeaLake/, which the preset matches to its classes).",
    ),
    "sun397": ("The baselines are on CoOp's SUN397 test split (split_zhou_SUN397.json).",),
    "dtd": ("The baselines are on CoOp's DTD test split (split_zhou_DescribableTextures.json).",),
    "caltech101": ("The official code tests on all but 30 training images per class.",),
}


class _Dumper(yaml.SafeDumper):
    """Block style, except lists of plain values in one line ([1, 2, 3]), as the hand-written examples."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> Any:
    flow = all(isinstance(v, (int, float, str)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def _output(o: Any, kind: str, name: str) -> dict[str, Any]:
    """``<output>/<kind>/<name>/`` with the options' credentials Secret (Table1Options, Figure1Options)."""
    out: dict[str, Any] = {"uri": f"{o.output.rstrip('/')}/{kind}/{name}/"}
    if o.credentials_secret:
        out["credentialsSecret"] = o.credentials_secret
    return out


def _dataset(o: Table1Options, name: str, preset: str, shards: int) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "SyntheticDataset",
        "metadata": {"name": name},
        "spec": {
            "labels": {"preset": preset},
            "prompts": {
                "strategy": "language-enhancement",
                "sentencesPerClass": min(200, o.images_per_class),
            },
            "generator": {
                "model": o.generator,
                "steps": o.steps,
                "guidanceScale": o.guidance_scale,
                "resolution": 256,
                "imagesPerClass": o.images_per_class,
            },
            "filter": {"clip": {"model": "RN50", "pretrained": "openai"}, "keepPerClass": o.keep_per_class},
            "sharding": {"shards": shards, "parallelism": min(shards, 16), "retriesPerShard": 2},
            "resources": {"gpus": 1, "cpu": "8", "memory": "32Gi"},
            "output": _output(o, "datasets", name),
        },
    }


def _experiment(o: Table1Options, dataset: str, preset: str, backbone: str) -> dict[str, Any]:
    model, suffix = BACKBONES[backbone]
    name = f"{dataset}-{suffix}"
    return {
        "apiVersion": API_VERSION,
        "kind": "RecognitionExperiment",
        "metadata": {"name": name},
        "spec": {
            "labels": {"preset": preset},
            "backbone": {"model": model, "pretrained": "openai"},
            "data": {
                "synthetic": [{"datasetRef": dataset}],
                "test": {"uri": f"{o.data.rstrip('/')}/{preset}/test/"},
            },
            "method": {
                "classifierTuning": {
                    "epochs": 30,
                    "lr": 2.0e-3,
                    "batchSizeSynthetic": 512,
                    "softTarget": {"weight": 0.5, "temperature": 2},
                }
            },
            "matrix": {"shots": [0], "seeds": list(o.seeds)},
            "resources": {"gpus": 1, "memory": "16Gi"},
            "output": _output(o, "experiments", name),
        },
    }


def _readme(o: Table1Options, rows: list[tuple[Any, ...]]) -> str:
    table = "\n".join(
        f"| {n} | {title} | {task} | {classes} | {rn50:.2f} | {vit:.2f} | [{file}]({file}) |"
        for n, title, task, classes, rn50, vit, file in rows
    )
    return f"""# Table 1: the 17 zero-shot datasets

One file per row of the paper's Table 1: a `SyntheticDataset` (Language Enhancement prompts, the
generator, the CLIP Filter with the official prompt per class, {o.keep_per_class} kept per class) and a
`RecognitionExperiment` per backbone (Classifier Tuning of the text-initialised head on the synthetic
images with soft targets, lr 2e-3, 30 epochs, batch 512, seeds {", ".join(map(str, o.seeds))}). The zero-shot
CLIP numbers are the paper's baselines (top-1 on each test set).

These files are written by `synthrec scaffold table1 --out examples/table1`; a test keeps them equal to
its output. To point them at your copies, write them again with your locations rather than editing 17
files:

    synthrec scaffold table1 --out my-table1 --data s3://my-bucket/datasets/ --output s3://my-bucket/synthrec/
    synthrec validate my-table1/*.yaml
    kubectl apply -f my-table1/

| # | dataset | task | classes | CLIP RN50 | CLIP ViT-B/16 | resources |
|---|---|---|---|---|---|---|
{table}

## Test data

Each experiment reads `<data><preset>/test/` (here `{o.data}<preset>/test/`) as an ImageFolder: one folder
per class. Folders match classes by the preset's names (case-insensitive, `_` and `-` read as spaces), by
its head names, or by the release's own folder names where the preset knows them: EuroSAT's
`AnnualCrop/ ... SeaLake/`, the WordNet ids of ImageNet, ImageNet-Sketch and ImageNet-R (`n01440764/`),
CUB's `001.Black_footed_Albatross/` and Caltech-256's `001.ak47/`. Any other layout needs a
`classMapping` (folder -> class name) on `data.test`.

The splits behind the paper's numbers (method spec §1.7): EuroSAT, SUN397 and DTD use CoOp's splits (the
EuroSAT baseline 37.51 is on CoOp's 8,100-image test split, `split_zhou_EuroSAT.json`); Caltech-101 uses
30 training images per class and the rest as test; CIFAR uses the official test sets; ImageNet its
validation set; ImageNet-R its 200-class subset.

## Cost

{o.images_per_class} images per class at the generator's native size (stored at 256 px): 2,000 x 1,000
classes for ImageNet and ImageNet-Sketch is 2 million images each. Lower `--images-per-class` (and
`--keep-per-class`) to scale a first pass down, and say so next to its numbers.
"""
