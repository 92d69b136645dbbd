"""Build the toy world once, deterministically from a seed, into a folder keyed by the builder version.

``build_toy_world(root)`` writes, under ``root / f"v{BUILDER_VERSION}-seed{seed}"``::

    sd/      the text-to-image pipeline (diffusers Stable Diffusion folder)
    clip/    the tiny CLIP (open_clip_config.json + open_clip_model.safetensors)
    t5/      the word-to-sentence model (transformers T5 + sentencepiece tokenizer)
    real/    train/<class>/*.png, test/<class>/*.png (ImageFolder)
    voc/     the detection transfer set (PASCAL VOC layout)
    README.txt, toy-world.json (the manifest, written last: a build without it is rebuilt)

Concurrent builders of the same folder wait for each other (a lock file); a finished build whose
manifest matches the builder version, seed and library versions is returned at once. The components train
in "spawn" worker processes, which import the caller's main module again: a script that calls
``build_toy_world`` must do so under ``if __name__ == "__main__":`` (as every multiprocessing program).
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
BUILDER_VERSION = 2
ENV_TOY_WORLD = "SYNTHREC_TOY_WORLD"  # where the toy world is built (default: <cache root>/toy-world)
MANIFEST_NAME = "toy-world.json"
README_NAME = "README.txt"
TRAIN_THREADS = 1  # per component: a seed gives the same weights on any machine with the same libraries
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
    overrides records them in its manifest and is reused only by a caller that passes the same overrides
    (or none: then whatever complete build is there is used, as tiny://world/ references do).
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
    """No recipes given: any complete build there will do (a worker resolving tiny://world/ uses what the
    caller built); given: only a build with exactly those overrides."""
    return recipes is None or world.manifest().get("overrides", {}) == _jsonable(recipes)


def _jsonable(recipes: dict[str, Any]) -> dict[str, Any]:
    from dataclasses import asdict, is_dataclass

    return {k: asdict(v) if is_dataclass(v) else v for k, v in sorted(recipes.items())}


def _build_locked(world: ToyWorld, recipes: dict[str, Any], progress: Progress) -> None:
    import torch

    from synthrec.tiny.build import _quiet_progress_bars, _torch_threads
    from synthrec.toyworld.evaluate import evaluate_world

    for name in (MANIFEST_NAME, README_NAME):
        (world.root / name).unlink(missing_ok=True)
    for name in (*_COMPONENTS, _SD_PARTS):
        shutil.rmtree(world.root / name, ignore_errors=True)
    log.info("building the toy world in %s (seed %d)", world.root, world.seed)
    started = time.perf_counter()
    parts, seconds, cpu_seconds = _build_components(world, recipes, progress)
    # Leave the caller's RNG and thread settings alone; no "Writing model shards" bars.
    with torch.random.fork_rng(devices=[]), _quiet_progress_bars(), _torch_threads(TRAIN_THREADS):
        t = time.perf_counter()
        quality = evaluate_world(world, progress)
        seconds["evaluate"] = round(time.perf_counter() - t, 1)
    seconds["total"] = round(time.perf_counter() - started, 1)
    manifest = {
        "builder": "synthrec.toyworld",
        "builder_version": BUILDER_VERSION,
        "seed": world.seed,
        "notice": NOTICE,
        "world_classes": list(WORLD_CLASSES),
        "label_classes": list(LABEL_CLASSES),
        "components": parts,
        "quality": quality,
        "overrides": _jsonable(recipes),
        "versions": library_versions(),
        "threads": TRAIN_THREADS,
        "build_seconds": seconds,
        "build_cpu_seconds": cpu_seconds,
    }
    _make_readable(world)
    (world.root / README_NAME).write_text(_readme(world, quality))
    tmp = world.root / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(world.manifest_path)  # last: marks the build complete
    log.info("toy world built in %.0f s: %s", seconds["total"], world.root)


# Longest first, so that the last one to start is a short one. The text-to-image model trains as two
# independent halves (its latent is designed), assembled into sd/ when both are done.
_JOBS = ("sd-denoiser", "clip", "sd-autoencoder", "t5", "data")
_SD_PARTS = ".sd-parts"


def _build_components(
    world: ToyWorld, recipes: dict[str, Any], progress: Progress
) -> tuple[dict[str, Any], dict[str, float], dict[str, float]]:
    """Train the components in parallel processes, one torch thread each: they are independent (each has
    its own seed), one thread makes each deterministic whatever the core count, and tiny kernels on two
    threads spend most of their time in OpenMP barriers when the host is busy."""
    import multiprocessing
    import threading
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")  # never fork a process that may hold torch threads
    channel = context.Queue()
    relay = threading.Thread(target=_relay, args=(channel, progress), daemon=True)
    relay.start()
    workers = max(1, min(len(_JOBS), _available_cpus()))
    parts: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    cpu: dict[str, float] = {}
    try:
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init, initargs=(channel,)) as pool:
            futures = {job: pool.submit(_build_component, job, world, recipes) for job in _JOBS}
            for job, future in futures.items():
                parts[job], seconds[job], cpu[job] = future.result()
    finally:
        channel.put(None)
        relay.join()
    data = parts.pop("data")
    parts.update(data)
    parts["sd"] = _assemble_sd(world, recipes, parts.pop("sd-autoencoder"), parts.pop("sd-denoiser"))
    cpu["total"] = round(sum(cpu.values()), 1)
    seconds["parallel_processes"] = workers
    return parts, seconds, cpu


def _assemble_sd(world: ToyWorld, recipes: dict[str, Any], *halves: dict[str, Any]) -> dict[str, Any]:
    from synthrec.toyworld.sd import assemble_sd

    out = assemble_sd(world.root / _SD_PARTS, world.sd, recipes.get("sd"))
    for half in halves:
        for key in ("parameters", "losses"):
            out.setdefault(key, {}).update(half[key])
    shutil.rmtree(world.root / _SD_PARTS, ignore_errors=True)
    return out


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


_CHANNEL: Any = None


def _init(channel: Any) -> None:
    global _CHANNEL
    _CHANNEL = channel


class _ChannelProgress:
    """A component's progress, sent to the building process (which owns the bars)."""

    def __init__(self) -> None:
        self.task = ""

    def start(self, task: str, total: int) -> None:
        self.task = task
        _CHANNEL.put(("start", task, total))

    def advance(self, steps: int = 1) -> None:
        _CHANNEL.put(("advance", self.task, steps))


def _relay(channel: Any, progress: Progress) -> None:
    while (message := channel.get()) is not None:
        kind, task, n = message
        if kind == "start":
            progress.start(task, n)
        else:
            progress.advance(n, task=task)


def _build_component(job: str, world: ToyWorld, recipes: dict[str, Any]) -> tuple[Any, float, float]:
    """One component, in a worker process: returns what it records in the manifest, wall and CPU seconds."""
    import torch

    from synthrec.tiny.build import _quiet_progress_bars

    started, cpu_started = time.perf_counter(), time.process_time()
    torch.set_num_threads(TRAIN_THREADS)
    progress = _ChannelProgress()
    seed = world.seed
    with _quiet_progress_bars():
        if job == "data":
            from synthrec.toyworld.datasets import build_real, build_voc

            out: Any = {
                "real": build_real(world.real, seed, recipes.get("data"), progress),
                "voc": build_voc(world.voc, seed, recipes.get("data"), progress),
            }
        elif job == "t5":
            from synthrec.toyworld.t5 import build_t5

            out = build_t5(world.t5, seed, recipes.get("t5"), progress)
        elif job == "clip":
            from synthrec.toyworld.clip import build_clip

            out = build_clip(world.clip, seed, recipes.get("clip"), progress)
        else:
            from synthrec.toyworld.sd import build_sd_part

            part = job.removeprefix("sd-")
            out = build_sd_part(part, world.root / _SD_PARTS, seed, recipes.get("sd"), progress)
    return out, round(time.perf_counter() - started, 1), round(time.process_time() - cpu_started, 1)


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
