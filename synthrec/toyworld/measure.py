"""The paper's experiments on the toy world, through synthrec's real stages (``synthrec run``'s local
runner, file:// storage, tiny://world/ references resolved to the build), and the numbers they give.

``python -m synthrec.toyworld.measure [--world DIR] [--out DIR] [--file examples/quickstart.yaml]`` builds
the toy world if needed, then runs the quickstart (what ``make demo`` runs):

1. ``toy-shapes``: Language Enhancement prompts -> text-to-image -> CLIP Filter;
2. ``toy-shapes-ct``: Classifier Tuning at each shot count and seed, with (``ct-syn``) and without
   (``ct-init``) the synthetic data;

and ``toy-shapes-rg``, Real Guidance from one real shot per class (img2img), for the feature-distance check,

and prints zero-shot, CT-syn and CT-init top-1 per shot count (mean over seeds), the detector-judged label
accuracy of the kept, rejected and unfiltered synthetic images, and the Real Guidance distances. The
learning tests (``tests/learning``) use these same functions. A toy world: not the paper's numbers.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import statistics
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from synthrec.toyworld.builder import ENV_TOY_WORLD, NOTICE, ToyWorld
from synthrec.toyworld.world import LABEL_CLASSES, detect

DATASET = "toy-shapes"  # the quickstart's resources (examples/quickstart.yaml)
EXPERIMENT = "toy-shapes-ct"
GUIDED = "toy-shapes-rg"
GUIDED_IMAGES_PER_CLASS = 16


def quickstart_file() -> Path:
    """examples/quickstart.yaml of a source checkout (the demo the measurements and the tests run)."""
    return Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml"


def load_quickstart(path: Path | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The quickstart's SyntheticDataset and RecognitionExperiment, as plain documents."""
    docs = [d for d in yaml.safe_load_all((path or quickstart_file()).read_text()) if d]
    kinds = {d["kind"]: d for d in docs}
    return kinds["SyntheticDataset"], kinds["RecognitionExperiment"]


def guided_resource(dataset: dict[str, Any], real_train: str, name: str = GUIDED) -> dict[str, Any]:
    """The dataset with Real Guidance from 1 real shot per class (img2img at the paper's 1-shot strength),
    basic prompts and no filter: for the feature-distance check."""
    body = copy.deepcopy(dataset)
    body["metadata"] = {"name": name}
    spec = body["spec"]
    spec["prompts"] = {"strategy": "basic"}
    spec["generator"].pop("imagesPerPrompt", None)
    spec["realGuidance"] = {
        "source": {"uri": real_train},
        "shots": 1,
        "imagesPerClass": GUIDED_IMAGES_PER_CLASS,
    }
    spec["filter"] = {"enabled": False}
    spec["output"] = {"uri": f"file:///unused/{name}/"}
    return body


def renamed_experiment(experiment: dict[str, Any], name: str, dataset: str | None = None) -> dict[str, Any]:
    """The experiment under another name (its own output), optionally on another dataset."""
    body = copy.deepcopy(experiment)
    body["metadata"] = {"name": name}
    body["spec"]["output"] = {"uri": f"file:///unused/{name}/"}
    if dataset is not None:
        body["spec"]["data"]["synthetic"] = [{"datasetRef": dataset}]
    return body


def renamed_dataset(dataset: dict[str, Any], name: str) -> dict[str, Any]:
    body = copy.deepcopy(dataset)
    body["metadata"] = {"name": name}
    body["spec"]["output"] = {"uri": f"file:///unused/{name}/"}
    return body


def run_resources(
    resources: Sequence[dict[str, Any]],
    storage: Path,
    *,
    worker_module: str = "synthrec.workers",
    parallel: int | None = None,
) -> None:
    """Run ``resources`` with ``synthrec run``'s machinery into ``storage`` (a local folder); RuntimeError
    naming the worker logs when anything fails."""
    from synthrec.local.command import RunRequest, execute
    from synthrec.local.ui import QuietUI

    class Errors(QuietUI):
        def __init__(self) -> None:
            self.lines: list[str] = []

        def error(self, text: str) -> None:
            self.lines.append(text)

    with tempfile.TemporaryDirectory(prefix="synthrec-toy-") as tmp:
        spec = Path(tmp) / "toy.yaml"
        spec.write_text(yaml.safe_dump_all(list(resources), sort_keys=False))
        ui = Errors()
        request = RunRequest(
            file=str(spec),
            storage=storage.as_uri(),
            parallel=parallel,
            report=False,
            worker_module=worker_module,
        )
        code = execute(request, ui)
    if code != 0:
        raise RuntimeError(f"synthrec run failed (exit {code}):\n" + "\n".join(ui.lines))


# ------------------------------------------------------------------------------------------ readings


def experiment_top1(storage: Path, name: str = EXPERIMENT) -> dict[tuple[str, int], list[float]]:
    """(variant, shots) -> top-1 of each seed, from the experiment's summary.json; ("zero-shot", 0) too."""
    summary = json.loads((storage / "experiments" / name / "summary.json").read_text())
    out: dict[tuple[str, int], list[float]] = {}
    for run in summary["runs"]:
        if run["top1"] is None:
            raise RuntimeError(f"{name}: run {run['name']} has no result")
        out.setdefault((run["variant"], run["shots"]), []).append(run["top1"])
        if run["variant"] == "ct-init" and run["shots"] == 0:
            out.setdefault(("zero-shot", 0), []).append(run["zero_shot_top1"])
    return out


def mean(values: Sequence[float]) -> float:
    return round(statistics.fmean(values), 2)


@dataclass
class Generated:
    """A generated image with its metadata and whether the CLIP Filter kept it."""

    key: str
    shard: int
    label: int
    image: Any  # PIL
    meta: dict[str, Any]
    kept: bool


def generated_images(storage: Path, name: str = DATASET) -> list[Generated]:
    """Every image of a dataset's shards, with ``kept`` from its index/kept.jsonl."""
    from PIL import Image

    root = storage / "datasets" / name
    kept_rows = (
        (root / "index" / "kept.jsonl").read_text().splitlines()
        if (root / "index" / "kept.jsonl").exists()
        else []
    )
    kept = {(int(r["shard"]), r["key"]) for r in map(json.loads, filter(None, kept_rows))}
    out = []
    for tar_path in sorted((root / "shards").glob("gen-*.tar")):
        shard = int(tar_path.stem.split("-")[1])
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                data = tar.extractfile(member)
                if data is not None:
                    members.setdefault(key, {})[ext] = data.read()
        for key, parts in sorted(members.items()):
            meta = json.loads(parts["json"])
            with Image.open(io.BytesIO(parts["jpg"])) as im:
                image = im.convert("RGB")
            out.append(Generated(key, shard, int(meta["class"]), image, meta, (shard, key) in kept))
    return out


def oracle_right(item: Generated) -> bool:
    """Whether the world's detector sees the image's label class (judged at 64 px, as the CLIP sees it)."""
    from PIL import Image

    return detect(item.image.resize((64, 64), Image.Resampling.BICUBIC)).name == LABEL_CLASSES[item.label]


def filter_oracle(images: Sequence[Generated]) -> dict[str, float]:
    """Detector-judged label accuracy (%) of the unfiltered, kept and rejected images."""
    right = [oracle_right(i) for i in images]

    def accuracy(select: list[bool]) -> float:
        chosen = [r for r, s in zip(right, select, strict=True) if s]
        return round(100 * sum(chosen) / len(chosen), 1) if chosen else float("nan")

    return {
        "unfiltered": accuracy([True] * len(images)),
        "kept": accuracy([i.kept for i in images]),
        "rejected": accuracy([not i.kept for i in images]),
        "images": len(images),
        "kept_images": sum(i.kept for i in images),
    }


def guidance_similarity(
    world: ToyWorld, guided: Sequence[Generated], unguided: Sequence[Generated]
) -> dict[str, float]:
    """Mean cosine similarity (tiny CLIP features) of each synthetic image to the real shot its class was
    guided from, for the guided images and for the unguided images of the same classes."""
    import torch

    from synthrec.toyworld.evaluate import clip_features, load_clip
    from synthrec.workers.realdata import decode_rgb

    model, preprocess, _ = load_clip(world.clip)
    shots: dict[int, Any] = {}
    for item in guided:
        uri = item.meta["real_source"]
        if item.label not in shots:
            shots[item.label] = decode_rgb(Path(uri.removeprefix("file://")).read_bytes())
    classes = sorted(shots)
    shot_f = clip_features(model, preprocess, [shots[c] for c in classes])
    index = {c: i for i, c in enumerate(classes)}

    def similarity(items: Sequence[Generated]) -> float:
        items = [i for i in items if i.label in index]
        feats = clip_features(model, preprocess, [i.image for i in items])
        own = shot_f[torch.tensor([index[i.label] for i in items])]
        return round(float((feats * own).sum(-1).mean()), 4)

    return {"guided": similarity(guided), "unguided": similarity(unguided)}


# ------------------------------------------------------------------------------------------ command


def measure(world: ToyWorld, storage: Path, quickstart: Path | None = None) -> dict[str, Any]:
    """Run the quickstart (and a Real Guidance dataset) on ``world`` into ``storage``; the readings."""
    import os

    dataset, experiment = load_quickstart(quickstart)
    before = os.environ.get(ENV_TOY_WORLD)
    os.environ[ENV_TOY_WORLD] = str(world.root.parent)  # tiny://world/ -> this build, in every worker
    try:
        real_train = experiment["spec"]["data"]["realTrain"]["uri"]
        run_resources([dataset, guided_resource(dataset, real_train), experiment], storage)
    finally:
        if before is None:
            os.environ.pop(ENV_TOY_WORLD, None)
        else:
            os.environ[ENV_TOY_WORLD] = before
    return readings(world, storage)


def readings(world: ToyWorld, storage: Path) -> dict[str, Any]:
    top1 = experiment_top1(storage)
    images = generated_images(storage)
    return {
        "top1": {
            f"{variant}@{shots}": {"mean": mean(v), "seeds": v}
            for (variant, shots), v in sorted(top1.items())
        },
        "filter_oracle": filter_oracle(images),
        "guidance_similarity": guidance_similarity(world, generated_images(storage, GUIDED), images),
    }


def main(argv: Sequence[str] | None = None) -> int:
    from synthrec.toyworld.__main__ import RichProgress
    from synthrec.toyworld.builder import build_toy_world, default_root

    parser = argparse.ArgumentParser(
        prog="python -m synthrec.toyworld.measure", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--world", help="parent folder of the toy world (default: the cache)")
    parser.add_argument("--seed", type=int, default=0, help="the toy world's seed")
    parser.add_argument("--file", type=Path, help="the resources to run (default: examples/quickstart.yaml)")
    parser.add_argument("--out", help="storage folder for the runs (default: a temporary folder)")
    args = parser.parse_args(argv)
    with RichProgress() as progress:
        world = build_toy_world(args.world or default_root(), seed=args.seed, progress=progress)
    with tempfile.TemporaryDirectory(prefix="synthrec-toy-measure-") as tmp:
        storage = Path(args.out).resolve() if args.out else Path(tmp)
        result = measure(world, storage, args.file)
    print(json.dumps({"world": str(world.root), "quality": world.manifest()["quality"], **result}, indent=2))
    rows = result["top1"]
    shots = sorted({int(key.split("@")[1]) for key in rows})
    print(f"\n{'shots':>5}  {'zero-shot':>9}  {'CT-init':>8}  {'CT-syn':>8}   (top-1 %, mean of the seeds)")
    for n in shots:
        zs = rows.get("zero-shot@0", {}).get("mean", float("nan"))
        init = rows.get(f"ct-init@{n}", {}).get("mean", float("nan"))
        syn = rows.get(f"ct-syn@{n}", {}).get("mean", float("nan"))
        print(f"{n:>5}  {zs:>9.1f}  {init:>8.1f}  {syn:>8.1f}")
    fo = result["filter_oracle"]
    print(
        f"\nlabel accuracy by the world's detector: kept {fo['kept']} %, unfiltered {fo['unfiltered']} %, "
        f"rejected {fo['rejected']} % ({fo['kept_images']} of {fo['images']} images kept)"
    )
    gs = result["guidance_similarity"]
    print(f"cosine to the real shot: Real Guidance {gs['guided']}, unguided {gs['unguided']}")
    print(NOTICE)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
