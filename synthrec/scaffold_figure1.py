"""The resources that reproduce the paper's Figure 1 for one dataset (few-shot, CLIP RN50): a Real Guidance
SyntheticDataset per (shots, seed) cell, guided by exactly the real shots that cell's runs train on, and
one RecognitionExperiment whose matrix runs every method of the figure: zero-shot CLIP, CT w. init (real
shots only), CT w. Syn (real shots + the cell's synthetic data, mixed), Tip-Adapter, Tip-Adapter-F and
CoOp, at 1/2/4/8/16 shots x 3 seeds.

Pure: options in, one YAML text out (``synthrec scaffold figure1`` writes it; a test checks that the
committed ``examples/eurosat-few-shot.yaml`` is exactly what the defaults give).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from synthrec.api.base import API_VERSION
from synthrec.noise_levels import paper_alpha_bar
from synthrec.scaffold import _Dumper, _output

# Figure 1 read off the paper's plot (CLIP RN50, +-0.3; method spec §2.5): shots 1, 2, 4, 8, 16.
FIGURE1: dict[str, dict[str, tuple[float, ...]]] = {
    "eurosat": {
        "zero-shot CLIP": (37.5,),
        "CT w. Syn": (64.3, 73.6, 79.9, 84.6, 88.5),
        "CT w. init": (54.8, 63.1, 74.5, 79.7, 85.8),
        "Tip-Adapter(-F)": (59.5, 66.2, 74.1, 77.9, 84.5),
        "CoOp": (53.3, 61.4, 70.9, 78.4, 84.8),
    },
    "sun397": {
        "zero-shot CLIP": (58.5,),
        "CT w. Syn": (63.8, 65.5, 67.5, 70.6, 72.2),
        "CT w. init": (62.1, 63.5, 66.1, 69.2, 71.6),
        "Tip-Adapter(-F)": (62.5, 63.6, 66.2, 68.9, 71.5),
        "CoOp": (60.3, 59.5, 63.7, 65.6, 69.3),
    },
}

# The splits the baselines of Figure 1 use: CoOp's (train / val / test folders of split_zhou_*.json).
_SPLITS = {
    "eurosat": "CoOp's EuroSAT split (split_zhou_EuroSAT.json: 13,500 train / 5,400 val / 8,100 test) in the "
    "release's folder names AnnualCrop/ ... SeaLake/, which the eurosat preset matches to its classes; "
    "zero-shot CLIP's 37.51 (Table 1) is on the 8,100-image test split",
    "sun397": "CoOp's SUN397 split (split_zhou_SUN397.json)",
    "dtd": "CoOp's DTD split (split_zhou_DescribableTextures.json)",
}

VARIANTS: tuple[dict[str, Any], ...] = (
    {"name": "zero-shot", "method": "zero-shot"},
    {"name": "ct-init", "synthetic": []},
    {"name": "ct-syn"},
    {"name": "tip-adapter", "method": "tip-adapter"},
    {"name": "tip-adapter-f", "method": "tip-adapter-f"},
    {"name": "coop", "method": "coop"},
)


@dataclass(frozen=True)
class Figure1Options:
    preset: str = "eurosat"
    data: str = "s3://datasets/"  # <data><preset>/train/, val/ and test/
    validation: bool = True  # <data><preset>/val/: Tip-Adapter's search, the best-validation results
    output: str = "s3://synthrec/"  # datasets/ and experiments/ go under it
    credentials_secret: str | None = "synthrec-s3"
    generator: str = "hf://stabilityai/stable-diffusion-2-1-base"
    steps: int = 50
    guidance_scale: float = 7.5
    images_per_class: int = 800  # Real Guidance, for every shot count (the official README)
    images_per_shard: int = 800
    shots: Sequence[int] = field(default_factory=lambda: (1, 2, 4, 8, 16))
    seeds: Sequence[int] = field(default_factory=lambda: (1, 2, 3))


def figure1(options: Figure1Options | None = None) -> str:
    """The YAML text: one SyntheticDataset per (shots, seed), then the experiment."""
    from synthrec.presets import canonical_preset_name, get_preset

    o = options or Figure1Options()
    preset = canonical_preset_name(o.preset)
    labels = get_preset(preset)
    slug = preset.replace("_", "-")
    classes = len(labels.classes)
    if 0 in o.shots or not o.shots or not o.seeds:
        raise ValueError("figure1 needs shot counts above 0 and at least one seed")
    datasets = [_dataset(o, preset, slug, n, seed, classes) for n in o.shots for seed in o.seeds]
    # the datasets differ in shots, seed and names only: a compact style (leaf mappings in one line) keeps
    # them side by side
    texts = [_dump(d, compact=True) for d in datasets] + [_dump(_experiment(o, preset, slug), compact=False)]
    header = "".join(f"# {line}\n" if line else "#\n" for line in _header(o, preset, labels.title))
    return header + "---\n".join(texts)


def _dump(doc: dict[str, Any], *, compact: bool) -> str:
    return yaml.dump(
        doc, Dumper=_Dumper, sort_keys=False, width=110, default_flow_style=None if compact else False
    )


def dataset_name(slug: str, shots: int | str, seed: int | str) -> str:
    return f"{slug}-rg-{shots}shot-seed{seed}"


def _root(o: Figure1Options, preset: str, split: str) -> dict[str, str]:
    return {"uri": f"{o.data.rstrip('/')}/{preset}/{split}/"}


def _dataset(
    o: Figure1Options, preset: str, slug: str, shots: int, seed: int, classes: int
) -> dict[str, Any]:
    name = dataset_name(slug, shots, seed)
    shards = max(1, math.ceil(classes * o.images_per_class / o.images_per_shard))
    return {
        "apiVersion": API_VERSION,
        "kind": "SyntheticDataset",
        "metadata": {"name": name},
        "spec": {
            "labels": {"preset": preset},
            "prompts": {"strategy": "basic"},
            "generator": {
                "model": o.generator,
                "steps": o.steps,
                "guidanceScale": o.guidance_scale,
                "resolution": 256,
            },
            "realGuidance": {
                "source": _root(o, preset, "train"),
                "shots": shots,
                "seed": seed,
                "imagesPerClass": o.images_per_class,
            },
            "filter": {
                "keepPerClass": o.images_per_class,
                "realFiltering": {"enabled": True, "rule": "nearest"},
            },
            "sharding": {"shards": shards, "parallelism": shards},
            "output": _output(o, "datasets", name),
        },
    }


def _experiment(o: Figure1Options, preset: str, slug: str) -> dict[str, Any]:
    name = f"{slug}-figure1"
    data: dict[str, Any] = {
        "synthetic": [{"datasetRef": dataset_name(slug, "{shots}", "{seed}")}],
        "realTrain": _root(o, preset, "train"),
    }
    if o.validation:
        data["validation"] = _root(o, preset, "val")
    data["test"] = _root(o, preset, "test")
    return {
        "apiVersion": API_VERSION,
        "kind": "RecognitionExperiment",
        "metadata": {"name": name},
        "spec": {
            "labels": {"preset": preset},
            "backbone": {"model": "RN50", "pretrained": "openai"},
            "data": data,
            "method": {
                "classifierTuning": {
                    "epochs": 30,
                    "lr": 1.0e-3,
                    "batchSizeReal": 32,
                    "batchSizeSynthetic": 512,
                    "mixing": "mixed",
                    "softTarget": {"weight": 0.5, "temperature": 2},
                }
            },
            "matrix": {
                "shots": list(o.shots),
                "seeds": list(o.seeds),
                "variants": [dict(v) for v in VARIANTS],
            },
            "execution": {"parallelism": 8},
            "output": _output(o, "experiments", name),
        },
    }


def _header(o: Figure1Options, preset: str, title: str) -> list[str]:
    cells = len(o.shots) * len(o.seeds)
    runs = 1 + cells * (len(VARIANTS) - 1)
    shots = ", ".join(map(str, o.shots))
    levels = ", ".join(f"{n}: {paper_alpha_bar(n):.3f}" for n in o.shots)
    split = _SPLITS.get(preset, "the dataset's train, val and test splits")
    text = f"""
Figure 1 of the paper for {title}: few-shot CLIP RN50 at {shots} shots x {len(o.seeds)} seeds, one
RecognitionExperiment with {runs} runs: zero-shot CLIP (one run), CT w. init (the text-initialised head
tuned on the real shots), CT w. Syn (real shots + synthetic data, mixed), Tip-Adapter, Tip-Adapter-F and
CoOp at their official defaults. Every run's metrics.json carries its method, shots and seed.

Real Guidance: one SyntheticDataset per (shots, seed) cell ({cells}), img2img from the cell's own real
shots: realGuidance.shots and .seed pick exactly the shots the cell's runs train on (data.realTrain at
the run's shots and seed), so no run sees a real image beyond its own. The experiment references the cells
with datasetRef {{shots}} and {{seed}}. The noise depends on the shots: the paper's signal level
(alpha-bar) {levels}, which the generate stage matches on the generator's scheduler
(`synthrec plan --hub` shows the strength).
"""
    lines = [*_wrap(text), ""]
    if preset in FIGURE1:
        lines.append(
            f"The paper's Figure 1 (read off the plot, +-0.3), top-1 at {'/'.join(map(str, o.shots))} shots:"
        )
        for method, values in FIGURE1[preset].items():
            lines.append(f"  {method}: " + " / ".join(f"{v:.1f}" for v in values))
        lines.append("")
    text = f"""
Data: {o.data}{preset}/train/, val/ and test/ as ImageFolders: {split}. The val split picks
Tip-Adapter's alpha and beta and the best-validation results reported next to the last epoch's (never
the test set). Point the URIs at your copies, or write the file again:
  synthrec scaffold figure1 --preset {preset} --data s3://my-bucket/datasets/ --out my-figure1.yaml
Cost: {cells} x {o.images_per_class} images per class, each denoised over only the last 6-40 % of the
{o.steps} steps (Real Guidance starts late), plus the runs on cached features.
Written by `synthrec scaffold figure1`: change its options and write again rather than edit.
"""
    return lines + _wrap(text)


def _wrap(text: str) -> list[str]:
    """Paragraphs re-wrapped at 105 characters; lines starting with spaces (commands) kept as they are."""
    import textwrap

    out: list[str] = []
    for paragraph in text.strip("\n").split("\n\n"):
        prose: list[str] = []
        for line in paragraph.splitlines():
            if line.startswith("  "):
                out += textwrap.wrap(" ".join(prose), 105, break_on_hyphens=False) if prose else []
                prose = []
                out.append(line)
            else:
                prose.append(line)
        out += textwrap.wrap(" ".join(prose), 105, break_on_hyphens=False) if prose else []
        out.append("")
    return out[:-1]
