"""Build the toy world once, deterministically from a seed, into a folder keyed by the builder version.

``build_toy_world(root)`` writes, under ``root / f"v{BUILDER_VERSION}-seed{seed}"``::

    sd/      the text-to-image pipeline (diffusers Stable Diffusion folder)
    clip/    the tiny CLIP (open_clip_config.json + open_clip_model.safetensors)
    t5/      the word-to-sentence model (transformers T5 + sentencepiece tokenizer)
    real/    train/<class>/*.png, test/<class>/*.png (ImageFolder)
    voc/     the detection transfer set (PASCAL VOC layout)
    README.txt, toy-world.json (the manifest, written last: a build without it is rebuilt)

Concurrent builders of the same folder wait for each other (a lock file); a finished build whose
manifest matches the builder version, seed and library versions is returned at once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthrec.toyworld.training import NoProgress, Progress
from synthrec.toyworld.world import LABEL_CLASSES, WORLD_CLASSES

log = logging.getLogger(__name__)

# Bump whenever anything the builder writes changes: a new version builds into a new folder.
BUILDER_VERSION = 1
ENV_TOY_WORLD = "SYNTHREC_TOY_WORLD"  # where the toy world is built (default: <cache root>/toy-world)
MANIFEST_NAME = "toy-world.json"
README_NAME = "README.txt"
TRAIN_THREADS = 2  # fixed, so that a seed gives the same weights on any machine with the same libraries
NOTICE = (
    "This is a TOY WORLD: coloured shapes drawn by a program, tiny models trained on them in a few CPU "
    "minutes. It shows the paper's effects in kind (synthetic data helps an imperfect zero-shot CLIP, "
    "the CLIP Filter removes wrong drawings); its numbers are not the paper's numbers."
)
_COMPONENTS = ("sd", "clip", "t5", "real", "voc")


@dataclass(frozen=True)
class ToyWorld:
    """Where a built toy world lives. All paths are absolute."""

    root: Path
    seed: int

    @property
    def sd(self) -> Path:
        return self.root / "sd"

    @property
    def clip(self) -> Path:
        return self.root / "clip"

    @property
    def t5(self) -> Path:
        return self.root / "t5"

    @property
    def real(self) -> Path:
        return self.root / "real"

    @property
    def voc(self) -> Path:
        return self.root / "voc"

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_NAME

    @classmethod
    def at(cls, parent: Path | str, seed: int = 0) -> ToyWorld:
        """The layout of the build for ``seed`` under ``parent`` (built or not)."""
        parent = Path(parent).expanduser().resolve()
        return cls(parent / f"v{BUILDER_VERSION}-seed{seed}", seed)

    def as_refs(self) -> dict[str, str]:
        """``file://`` references: sd, clip, t5, real_train, real_test, voc."""
        return {
            "sd": self.sd.as_uri(),
            "clip": self.clip.as_uri(),
            "t5": self.t5.as_uri(),
            "real_train": (self.real / "train").as_uri(),
            "real_test": (self.real / "test").as_uri(),
            "voc": self.voc.as_uri(),
        }

    def manifest(self) -> dict[str, Any]:
        return json.loads(self.manifest_path.read_text())

    def is_built(self) -> bool:
        """A complete build of this builder version, seed and library versions is present."""
        try:
            data = self.manifest()
        except (OSError, ValueError):
            return False
        return (
            data.get("builder_version") == BUILDER_VERSION
            and data.get("seed") == self.seed
            and data.get("versions") == library_versions()
            and all((self.root / name).is_dir() for name in _COMPONENTS)
        )


def default_root() -> Path:
    """$SYNTHREC_TOY_WORLD, else <synthrec cache root>/toy-world (next to, never inside, tiny-models)."""
    from synthrec import contract

    override = os.environ.get(ENV_TOY_WORLD)
    return Path(override) if override else contract.cache_root() / "toy-world"


def library_versions() -> dict[str, str]:
    from synthrec.tiny.layout import _library_versions

    return _library_versions()


def build_toy_world(
    parent: Path | str | None = None,
    *,
    seed: int = 0,
    force: bool = False,
    progress: Progress | None = None,
    recipes: dict[str, Any] | None = None,
) -> ToyWorld:
    """Build (or find) the toy world for ``seed`` under ``parent`` (default: ``default_root()``).

    ``recipes`` overrides component recipes (keys sd, clip, t5, data) for experiments; a build with
    overrides records them in its manifest and is never mistaken for the default build, because it is
    only reused when the caller passes the same overrides.
    """
    world = ToyWorld.at(parent if parent is not None else default_root(), seed)
    if not force and world.is_built() and _same_recipes(world, recipes):
        return world
    from synthrec.storage import exclusive_lock

    world.root.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(world.root / ".toy-world.lock"):
        if not force and world.is_built() and _same_recipes(world, recipes):  # built while we waited
            return world
        _build_locked(world, recipes or {}, progress or NoProgress())
    return world


def _same_recipes(world: ToyWorld, recipes: dict[str, Any] | None) -> bool:
    return world.manifest().get("overrides", {}) == _jsonable(recipes or {})


def _jsonable(recipes: dict[str, Any]) -> dict[str, Any]:
    from dataclasses import asdict, is_dataclass

    return {k: asdict(v) if is_dataclass(v) else v for k, v in sorted(recipes.items())}


def _build_locked(world: ToyWorld, recipes: dict[str, Any], progress: Progress) -> None:
    import torch

    from synthrec.tiny.build import _quiet_progress_bars, _torch_threads
    from synthrec.toyworld.clip import build_clip
    from synthrec.toyworld.datasets import build_real, build_voc
    from synthrec.toyworld.evaluate import evaluate_world
    from synthrec.toyworld.sd import build_sd
    from synthrec.toyworld.t5 import build_t5

    for name in (MANIFEST_NAME, README_NAME):
        (world.root / name).unlink(missing_ok=True)
    for name in _COMPONENTS:
        shutil.rmtree(world.root / name, ignore_errors=True)
    log.info("building the toy world in %s (seed %d)", world.root, world.seed)
    started = time.perf_counter()
    cpu_started = time.process_time()
    seconds: dict[str, float] = {}
    parts: dict[str, Any] = {}
    seed = world.seed
    steps = [
        ("real", lambda: build_real(world.real, seed, recipes.get("data"), progress)),
        ("voc", lambda: build_voc(world.voc, seed, recipes.get("data"), progress)),
        ("t5", lambda: build_t5(world.t5, seed, recipes.get("t5"), progress)),
        ("clip", lambda: build_clip(world.clip, seed, recipes.get("clip"), progress)),
        ("sd", lambda: build_sd(world.sd, seed, recipes.get("sd"), progress)),
    ]
    # Leave the caller's RNG and thread settings alone; no "Writing model shards" bars.
    with torch.random.fork_rng(devices=[]), _quiet_progress_bars(), _torch_threads(TRAIN_THREADS):
        for name, build in steps:
            t = time.perf_counter()
            parts[name] = build()
            seconds[name] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        quality = evaluate_world(world, progress)
        seconds["evaluate"] = round(time.perf_counter() - t, 1)
    seconds["total"] = round(time.perf_counter() - started, 1)
    manifest = {
        "builder": "synthrec.toyworld",
        "builder_version": BUILDER_VERSION,
        "seed": seed,
        "notice": NOTICE,
        "world_classes": list(WORLD_CLASSES),
        "label_classes": list(LABEL_CLASSES),
        "components": parts,
        "quality": quality,
        "overrides": _jsonable(recipes),
        "versions": library_versions(),
        "threads": TRAIN_THREADS,
        "build_seconds": seconds,
        "build_cpu_seconds": round(time.process_time() - cpu_started, 1),
    }
    _make_readable(world)
    (world.root / README_NAME).write_text(_readme(world, quality))
    tmp = world.root / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(world.manifest_path)  # last: marks the build complete
    log.info("toy world built in %.0f s: %s", seconds["total"], world.root)


def _make_readable(world: ToyWorld) -> None:
    # safetensors writes 0600 files; a worker container running as another user must still read them.
    for name in _COMPONENTS:
        for path in (world.root / name).rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)


def _readme(world: ToyWorld, quality: dict[str, Any]) -> str:
    refs = "\n".join(f"  {k:<10} {v}" for k, v in world.as_refs().items())
    return f"""synthrec toy world (builder version {BUILDER_VERSION}, seed {world.seed})

{NOTICE}

Rebuild with:  python -m synthrec.toyworld {world.root.parent} --seed {world.seed} --force

sd/    text-to-image (diffusers StableDiffusionPipeline, 64 px, DDIM, v-prediction)
clip/  tiny open_clip ModifiedResNet, 64 px, embed dim 32 (open_clip "local-dir:" folder)
t5/    word-to-sentence T5 (input "a <class>"), sentencepiece tokenizer
real/  ImageFolder train/ and test/ for the {len(WORLD_CLASSES)} world classes (folders use '_' for spaces)
voc/   detection transfer set, PASCAL VOC layout

Label space of the demo (class-index order): {", ".join(LABEL_CLASSES)}
Measured at build time: {json.dumps(quality)}

References:
{refs}
"""
