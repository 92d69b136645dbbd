"""Label-space presets: class names, CLIP prompt templates and generation prompts per dataset.

A preset is the label space of one of the paper's datasets (or the offline ``tiny`` demo):

- ``classes``: each class's ``name`` (used in generation prompts, language enhancement and as the class's
  identity, e.g. its folder) and ``head_name`` (the text for the CLIP zero-shot head, CLIP-filter scores
  and soft targets). They differ only for EuroSAT, as in the official code.
- ``templates``: CLIP templates with a ``{c}`` placeholder for the head name (``t.format(c=name)``),
  the paper's head-initialisation set where the official code gives one.
- ``prompt_template`` / ``prompt_wrapper`` / ``le_input``: ``{}`` format strings for the basic-strategy
  prompt, the wrapper around a language-enhancement sentence, and the word-to-sentence model's input.

Class lists come from installed packages where one ships them (open_clip for ImageNet, clip_benchmark
for EuroSAT, Pets, Flowers and Caltech-101) and otherwise from the ``*.txt`` files beside this module.
Neither package is imported: open_clip's ``zero_shot_metadata.py`` is loaded on its own (importing
``open_clip`` would import torch) and clip_benchmark's JSON files are read directly.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = [
    "PRESET_ALIASES",
    "PRESET_NAMES",
    "LabelClass",
    "Preset",
    "PresetError",
    "canonical_preset_name",
    "get_preset",
]

PRESET_NAMES: tuple[str, ...] = (
    "caltech101",
    "cifar10",
    "cifar100",
    "dtd",
    "eurosat",
    "fgvc_aircraft",
    "flowers102",
    "food101",
    "imagenet1k",
    "oxford_pets",
    "stanford_cars",
    "sun397",
    "tiny",
)

# Keys are in normalised form (lower case, '-' and ' ' as '_'); see canonical_preset_name.
PRESET_ALIASES: dict[str, str] = {
    "imagenet": "imagenet1k",
    "imagenet_1k": "imagenet1k",
    "in1k": "imagenet1k",
    "pets": "oxford_pets",
    "oxford_iiit_pet": "oxford_pets",
    "oxfordpets": "oxford_pets",
    "flowers": "flowers102",
    "flowers_102": "flowers102",
    "oxford_flowers": "flowers102",
    "cars": "stanford_cars",
    "stanfordcars": "stanford_cars",
    "aircraft": "fgvc_aircraft",
    "fgvcaircraft": "fgvc_aircraft",
    "food": "food101",
    "food_101": "food101",
    "sun": "sun397",
    "sun_397": "sun397",
    "cifar_10": "cifar10",
    "cifar_100": "cifar100",
    "caltech": "caltech101",
    "caltech_101": "caltech101",
    "describable_textures": "dtd",
}

_WORKERS_HINT = "install the workers extra: pip install 'synthrec[workers]'"


class PresetError(ValueError):
    """An unknown preset name, or a preset whose source package or data is missing or inconsistent."""


@dataclass(frozen=True)
class LabelClass:
    name: str
    head_name: str = ""  # empty: the head uses ``name``

    def __post_init__(self) -> None:
        if not self.head_name:
            object.__setattr__(self, "head_name", self.name)


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    classes: tuple[LabelClass, ...]
    templates: tuple[str, ...]
    prompt_template: str
    prompt_wrapper: str | None
    le_input: str
    # Where each field group came from, for the dataset card. Shared by every caller: do not mutate.
    provenance: dict[str, str] = field(compare=False)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    @property
    def head_names(self) -> tuple[str, ...]:
        return tuple(c.head_name for c in self.classes)


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def canonical_preset_name(name: str) -> str:
    """The preset name for ``name``: a preset name or alias, in any case, with '-' or '_' alike."""
    key = _normalise(name)
    if key in PRESET_NAMES:
        return key
    if key in PRESET_ALIASES:
        return PRESET_ALIASES[key]
    import difflib

    close = difflib.get_close_matches(key, [*PRESET_NAMES, *PRESET_ALIASES], n=1)
    hint = f" Did you mean {PRESET_ALIASES.get(close[0], close[0])!r}?" if close else ""
    raise PresetError(
        f"unknown label preset {name!r}.{hint} Valid presets: {', '.join(PRESET_NAMES)} "
        f"(aliases: {', '.join(sorted(PRESET_ALIASES))}); or give the classes explicitly."
    )


# ---------------------------------------------------------------------------------------------- sources


def _package_dir(module: str) -> Path:
    # Top-level find_spec locates a package without importing it.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise PresetError(
            f"this preset needs the Python package {module!r}, which is not installed; {_WORKERS_HINT}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _version(distribution: str) -> str:
    import importlib.metadata  # lazily: it costs more than the rest of this module's imports

    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


@functools.cache
def _open_clip_metadata() -> ModuleType:
    path = _package_dir("open_clip") / "zero_shot_metadata.py"
    spec = importlib.util.spec_from_file_location("_synthrec_open_clip_zero_shot_metadata", path)
    if spec is None or spec.loader is None or not path.is_file():
        raise PresetError(f"open_clip is installed but {path} is missing; reinstall it ({_WORKERS_HINT})")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def _clip_benchmark_json(filename: str) -> dict[str, Any]:
    path = _package_dir("clip_benchmark") / "datasets" / filename
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        message = f"clip_benchmark is installed but {path} is missing; reinstall it ({_WORKERS_HINT})"
        raise PresetError(message) from None


def _data_lines(filename: str) -> tuple[str, ...]:
    # One entry per line; lines starting with '#' say where the list comes from.
    text = (Path(__file__).with_name(filename)).read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line and not line.startswith("#"))


@dataclass(frozen=True)
class _Source:
    """One list (class names or templates) and the provenance line that names where it came from."""

    load: Callable[[], Sequence[str]]
    describe: Callable[[], str]


def _from_file(filename: str, spelling: str = "openai/CLIP data/prompts.md") -> _Source:
    return _Source(
        lambda: _data_lines(filename), lambda: f"synthrec/presets/{filename} (spelling of {spelling})"
    )


def _from_clip_benchmark(filename: str, key: str) -> _Source:
    def load() -> Sequence[str]:
        table = _clip_benchmark_json(filename)
        if key not in table:
            raise PresetError(f"clip_benchmark's {filename} has no {key!r} entry; {_WORKERS_HINT} (>= 1.6)")
        return table[key]

    return _Source(
        load,
        lambda: f"clip-benchmark {_version('clip-benchmark')} clip_benchmark/datasets/{filename}[{key!r}]",
    )


def _from_open_clip(attribute: str, call_with: str | None = None) -> _Source:
    def load() -> Sequence[str]:
        value = getattr(_open_clip_metadata(), attribute)
        # open_clip's templates are lambdas; calling one with '{c}' gives the format string back.
        return [item(call_with) for item in value] if call_with is not None else value

    def describe() -> str:
        return f"open_clip_torch {_version('open_clip_torch')} open_clip/zero_shot_metadata.py {attribute}"

    return _Source(load, describe)


def _inline(values: Sequence[str], source: str) -> _Source:
    return _Source(lambda: tuple(values), lambda: source)


# Head-initialisation templates of the official code where no installed package ships that exact set:
# CVMI-Lab/SyntheticData, src/classifier-tuning/src/templates/transfer_ds_template.py (commit e47c27d).
# clip_benchmark ships 3 EuroSAT, 2 aircraft and 8 DTD templates, and words the food one without "a".
_OFFICIAL = "CVMI-Lab/SyntheticData src/classifier-tuning/src/templates/transfer_ds_template.py"
_OFFICIAL_TEMPLATES: dict[str, tuple[str, ...]] = {
    "eurosat": ("a centered satellite photo of {c}.",),
    "fgvc_aircraft": ("a photo of a {c}, a type of aircraft.",),
    "food101": ("a photo of a {c}, a type of food.",),
    "dtd": ("{c} texture.",),
}

# open_clip (like CLIP's notebook and the official code) names two ImageNet class pairs alike: 657/744
# 'missile' and 836/837 'sunglasses'. Names key folders and prompt files, so they must be unique: those
# two take the first lemma of their WordNet synset ('projectile, missile'; 'sunglass'). The head keeps
# open_clip's text, as the paper's zero-shot head did.
_IMAGENET_NAME_OVERRIDES: dict[int, str] = {744: "projectile", 836: "sunglass"}

_TINY_CLASSES = ("red circle", "green square", "blue triangle", "yellow cross")
_TINY_TEMPLATES = ("a photo of a {c}.", "a drawing of a {c}.")


@dataclass(frozen=True)
class _Spec:
    title: str
    names: _Source
    templates: _Source
    head_names: _Source | None = None  # None: the head uses the generation names
    name_overrides: dict[int, str] = field(default_factory=dict)
    prompt_template: str = "a photo of a {}."
    prompt_wrapper: str | None = None
    le_input: str = "a {}"  # the official LE feeds 'a <name>', article written as is


_CB_NAMES = "en_classnames.json"
_CB_TEMPLATES = "en_zeroshot_classification_templates.json"

_SPECS: dict[str, _Spec] = {
    "caltech101": _Spec(
        "Caltech-101",
        # 102 classes with 'background' first: the folder order of 101_ObjectCategories, as clip_benchmark's
        # loader and the official code use it (torchvision's Caltech101 drops BACKGROUND_Google).
        names=_from_clip_benchmark(_CB_NAMES, "caltech101"),
        templates=_from_clip_benchmark(_CB_TEMPLATES, "caltech101"),
    ),
    "cifar10": _Spec(
        "CIFAR-10",
        names=_from_file("cifar10.txt"),
        templates=_from_clip_benchmark(_CB_TEMPLATES, "cifar10"),
    ),
    "cifar100": _Spec(
        "CIFAR-100",
        names=_from_file("cifar100.txt"),
        templates=_from_clip_benchmark(_CB_TEMPLATES, "cifar100"),
    ),
    "dtd": _Spec(
        "DTD (Describable Textures)",
        names=_from_file("dtd.txt"),
        templates=_inline(_OFFICIAL_TEMPLATES["dtd"], _OFFICIAL),
    ),
    "eurosat": _Spec(
        "EuroSAT",
        names=_from_file("eurosat_prompt_names.txt", "CVMI-Lab/SyntheticData src/glide/glide_fsl.py"),
        # CoOp's names, which the official code uses for the head.
        head_names=_from_clip_benchmark(_CB_NAMES, "eurosat"),
        templates=_inline(_OFFICIAL_TEMPLATES["eurosat"], _OFFICIAL),
        prompt_template="a centered satellite photo of {}.",
        prompt_wrapper="a centered satellite photo of {}",  # src/glide/glide_zsl.py
    ),
    "fgvc_aircraft": _Spec(
        "FGVC-Aircraft",
        names=_from_file("fgvc_aircraft.txt"),
        templates=_inline(_OFFICIAL_TEMPLATES["fgvc_aircraft"], _OFFICIAL),
    ),
    "flowers102": _Spec(
        "Oxford Flowers-102",
        names=_from_clip_benchmark(_CB_NAMES, "flowers"),
        templates=_from_clip_benchmark(_CB_TEMPLATES, "flowers"),
    ),
    "food101": _Spec(
        "Food-101",
        names=_from_file("food101.txt"),
        templates=_inline(_OFFICIAL_TEMPLATES["food101"], _OFFICIAL),
    ),
    "imagenet1k": _Spec(
        "ImageNet-1k",
        names=_from_open_clip("IMAGENET_CLASSNAMES"),
        name_overrides=_IMAGENET_NAME_OVERRIDES,
        # The 7-template ensemble, which is also the official code's imagenet_template.
        templates=_from_open_clip("SIMPLE_IMAGENET_TEMPLATES", call_with="{c}"),
    ),
    "oxford_pets": _Spec(
        "Oxford-IIIT Pets",
        names=_from_clip_benchmark(_CB_NAMES, "pets"),
        templates=_from_clip_benchmark(_CB_TEMPLATES, "pets"),
    ),
    "stanford_cars": _Spec(
        "Stanford Cars",
        names=_from_file("stanford_cars.txt"),
        templates=_from_clip_benchmark(_CB_TEMPLATES, "cars"),
    ),
    "sun397": _Spec(
        "SUN397",
        names=_from_file("sun397.txt"),
        templates=_from_clip_benchmark(_CB_TEMPLATES, "sun397"),
    ),
    "tiny": _Spec(
        "tiny (offline demo: four coloured shapes)",
        names=_inline(_TINY_CLASSES, "synthrec.presets (offline demo; the drawn real set uses these names)"),
        templates=_inline(_TINY_TEMPLATES, "synthrec.presets (offline demo)"),
    ),
}


def _check(preset: Preset) -> Preset:
    # Guards the data files and the packages' lists: a broken preset should fail here, not mid-pipeline.
    where = f"label preset {preset.name!r}"
    names = preset.names
    if not names:
        raise PresetError(f"{where} has no classes")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PresetError(f"{where} names several classes alike: {dupes}")
    for template in preset.templates:
        if template.count("{c}") != 1:
            raise PresetError(f"{where}: template {template!r} must contain '{{c}}' exactly once")
    for label, text in (("prompt_template", preset.prompt_template), ("le_input", preset.le_input)):
        if text.count("{}") != 1:
            raise PresetError(f"{where}: {label} {text!r} must contain '{{}}' exactly once")
    if preset.prompt_wrapper is not None and preset.prompt_wrapper.count("{}") != 1:
        wrapper = preset.prompt_wrapper
        raise PresetError(f"{where}: prompt_wrapper {wrapper!r} must contain '{{}}' exactly once")
    return preset


@functools.cache
def _load(name: str) -> Preset:
    spec = _SPECS[name]
    names = list(spec.names.load())
    for index, override in spec.name_overrides.items():
        names[index] = override
    heads = list(spec.head_names.load()) if spec.head_names is not None else list(spec.names.load())
    if len(heads) != len(names):
        raise PresetError(f"label preset {name!r}: {len(names)} class names but {len(heads)} head names")
    provenance = {"classes": spec.names.describe(), "templates": spec.templates.describe()}
    if spec.head_names is not None:
        provenance["head_names"] = spec.head_names.describe()
    elif spec.name_overrides:
        provenance["head_names"] = spec.names.describe()
        overrides = ", ".join(f"{i}: {n!r}" for i, n in sorted(spec.name_overrides.items()))
        provenance["classes"] += f"; where the source repeats a name: {overrides}"
    else:
        provenance["head_names"] = "same as classes"
    provenance["prompts"] = (
        "official code (CVMI-Lab/SyntheticData src/glide/glide_zsl.py, glide_fsl.py)"
        if spec.prompt_wrapper
        else "synthrec default (paper's basic strategy: 'a photo of a [CLASS]')"
    )
    return _check(
        Preset(
            name=name,
            title=spec.title,
            classes=tuple(LabelClass(n, h) for n, h in zip(names, heads, strict=True)),
            templates=tuple(spec.templates.load()),
            prompt_template=spec.prompt_template,
            prompt_wrapper=spec.prompt_wrapper,
            le_input=spec.le_input,
            provenance=provenance,
        )
    )


def get_preset(name: str) -> Preset:
    """The preset ``name`` (or an alias); loaded once per process."""
    return _load(canonical_preset_name(name))
