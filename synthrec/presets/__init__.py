"""Label-space presets: class names, CLIP prompt templates and generation prompts per dataset.

A preset is the label space of one of the paper's 17 Table 1 datasets, of its pre-training study's IN-2K
(``imagenet2k``: ImageNet-1k plus 1,000 ImageNet-21k classes, ``IN2K_EXTRA``), or the offline ``tiny`` demo:

- ``classes``: each class's ``name`` (used in generation prompts, language enhancement, the CLIP Filter's
  prompts and as the class's identity), ``head_name`` (the text for the CLIP zero-shot head and soft
  targets; where the official code's head uses another spelling: EuroSAT, SUN397, Stanford Cars,
  Flowers, Caltech-256) and ``folder`` (the release's class folder when it is not the name, e.g. EuroSAT's
  ``AnnualCrop`` or CUB's ``001.Black_footed_Albatross``, so real data in the release layout matches).
- ``templates``: CLIP templates with a ``{c}`` placeholder for the head name (``t.format(c=name)``),
  the paper's head-initialisation set where the official code gives one.
- ``filter_template``: the CLIP Filter's one prompt per class, ``{c}`` for the generation name, as the
  official ``select_glide_ims_by_clip.py`` builds it where it gives one (EuroSAT: "a centered satellite
  photo of a {c}.").
- ``prompt_templates`` / ``prompt_wrapper`` / ``le_input``: ``{}`` format strings for the basic-strategy
  prompts (one prompt per template), the wrapper around a language-enhancement sentence, and the
  word-to-sentence model's input. ImageNet-Sketch and ImageNet-R carry their style here.

Class lists come from installed packages where one ships them (open_clip for ImageNet's names, timm for
ImageNet's WordNet folders and ImageNet-R's 200-class subset, clip_benchmark for EuroSAT, Pets, Flowers and
Caltech-101) and otherwise from the ``*.txt`` files beside this module, each of which names its source.
No package is imported: open_clip's ``zero_shot_metadata.py`` is loaded on its own (importing ``open_clip``
would import torch) and the data files of clip_benchmark and timm are read directly.
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
    "TABLE1",
    "VOC_CLASSES",
    "LabelClass",
    "Preset",
    "PresetError",
    "canonical_preset_name",
    "get_preset",
]

PRESET_NAMES: tuple[str, ...] = (
    "birdsnap",
    "caltech101",
    "caltech256",
    "cifar10",
    "cifar100",
    "cub200",
    "dtd",
    "eurosat",
    "fgvc_aircraft",
    "flowers102",
    "food101",
    "imagenet1k",
    "imagenet2k",
    "imagenet_r",
    "imagenet_sketch",
    "oxford_pets",
    "pascal_voc",
    "stanford_cars",
    "sun397",
    "tiny",
)

# Keys are in normalised form (lower case, '-' and ' ' as '_'); see canonical_preset_name.
PRESET_ALIASES: dict[str, str] = {
    "imagenet": "imagenet1k",
    "imagenet_1k": "imagenet1k",
    "in1k": "imagenet1k",
    "imagenet_2k": "imagenet2k",
    "in2k": "imagenet2k",
    "pets": "oxford_pets",
    "voc": "pascal_voc",
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
    "caltech_256": "caltech256",
    "describable_textures": "dtd",
    "cub": "cub200",
    "cub_200": "cub200",
    "cub_200_2011": "cub200",
    "birds": "birdsnap",
    "imagenetr": "imagenet_r",
    "in_r": "imagenet_r",
    "imagenetsketch": "imagenet_sketch",
    "in_sketch": "imagenet_sketch",
    "sketch": "imagenet_sketch",
}

_WORKERS_HINT = "install the workers extra: pip install 'synthrec[workers]'"


class PresetError(ValueError):
    """An unknown preset name, or a preset whose source package or data is missing or inconsistent."""


@dataclass(frozen=True)
class LabelClass:
    name: str
    head_name: str = ""  # empty: the head uses ``name``
    folder: str = ""  # the release's class folder where it is neither the name nor the head name

    def __post_init__(self) -> None:
        if not self.head_name:
            object.__setattr__(self, "head_name", self.name)


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    classes: tuple[LabelClass, ...]
    templates: tuple[str, ...]
    prompt_templates: tuple[str, ...]
    prompt_wrapper: str | None
    le_input: str
    filter_template: str
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


@functools.cache
def _timm_lines(filename: str) -> tuple[str, ...]:
    path = _package_dir("timm") / "data" / "_info" / filename
    try:
        return tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    except FileNotFoundError:
        raise PresetError(
            f"timm is installed but {path} is missing; reinstall it ({_WORKERS_HINT})"
        ) from None


def _from_timm(filename: str) -> _Source:
    return _Source(
        lambda: _timm_lines(filename), lambda: f"timm {_version('timm')} timm/data/_info/{filename}"
    )


def _derived(source: _Source, rule: Callable[[str], str], how: str) -> _Source:
    """Another spelling of a list, made by a rule from each entry (one source, several spellings)."""
    return _Source(lambda: [rule(v) for v in source.load()], lambda: f"{source.describe()}, {how}")


def _imagenet_r_names() -> list[str]:
    # ImageNet-R's 200 classes as indices into ImageNet-1k (timm), named as open_clip names them: the
    # official code's name_imagenet_r is exactly this list.
    names = _open_clip_metadata().IMAGENET_CLASSNAMES
    return [names[int(i)] for i in _timm_lines("imagenet_r_indices.txt")]


# IN-2K (method spec §3.1, Tables 9-11): ImageNet-1k plus 1,000 ImageNet-21k classes. The paper does not
# say which (baselines-and-pretraining.md §7); synthrec draws them reproducibly from timm's ImageNet-12k
# synsets (the ImageNet-21k classes timm keeps for having enough images) that are not ImageNet-1k classes:
# ranked by blake2b("in2k", IN2K_SEED, synset), each named by its first WordNet lemma (timm's
# imagenet_synset_to_lemma.txt) not already a class name (a synset whose lemmas are all taken is passed
# over), until IN2K_EXTRA are drawn. The names are in every dataset card (labels.classes), the synsets are
# the preset's folders (real ImageNet-21k images in their release layout match them).
IN2K_EXTRA = 1000
IN2K_SEED = 0


@functools.cache
def _imagenet2k_extra() -> tuple[tuple[str, str], ...]:
    """(synset, name) of the 1,000 classes IN-2K adds to ImageNet-1k, in draw order."""
    import hashlib

    in1k = set(_timm_lines("imagenet_synsets.txt"))
    lemmas = dict(line.split("\t", 1) for line in _timm_lines("imagenet_synset_to_lemma.txt"))
    taken = set(_with_overrides(_open_clip_metadata().IMAGENET_CLASSNAMES, _IMAGENET_NAME_OVERRIDES))
    pool = [s for s in _timm_lines("imagenet12k_synsets.txt") if s not in in1k and s in lemmas]

    def rank(synset: str) -> bytes:
        return hashlib.blake2b(f"in2k\x1f{IN2K_SEED}\x1f{synset}".encode(), digest_size=8).digest()

    drawn: list[tuple[str, str]] = []
    for synset in sorted(pool, key=rank):
        name = next((n.strip() for n in lemmas[synset].split(",") if n.strip() not in taken), None)
        if name is None:
            continue
        taken.add(name)
        drawn.append((synset, name))
        if len(drawn) == IN2K_EXTRA:
            return tuple(drawn)
    raise PresetError(f"timm's ImageNet-12k list has fewer than {IN2K_EXTRA} classes outside ImageNet-1k")


def _imagenet2k_names() -> list[str]:
    base = _with_overrides(_open_clip_metadata().IMAGENET_CLASSNAMES, _IMAGENET_NAME_OVERRIDES)
    return [*base, *(name for _, name in _imagenet2k_extra())]


def _imagenet2k_heads() -> list[str]:
    # ImageNet-1k keeps open_clip's head text (as the imagenet1k preset); the added classes their lemma.
    return [*_open_clip_metadata().IMAGENET_CLASSNAMES, *(name for _, name in _imagenet2k_extra())]


def _imagenet2k_folders() -> list[str]:
    return [*_timm_lines("imagenet_synsets.txt"), *(synset for synset, _ in _imagenet2k_extra())]


def _strip_number(folder: str) -> str:
    """'015.bonsai-101' -> 'bonsai-101' (Caltech-256 and CUB number their class folders)."""
    return folder.split(".", 1)[1]


def _caltech256_name(folder: str) -> str:
    # '015.bonsai-101' -> 'bonsai': the '-101' marks classes shared with Caltech-101, not part of the name.
    return _strip_number(folder).removesuffix("-101").replace("-", " ")


def _year_first(name: str) -> str:
    """'AM General Hummer SUV 2000' -> '2000 AM General Hummer SUV', CoOp's rule (datasets/stanford_cars.py)
    and the official code's cars_names_coop."""
    words = name.split(" ")
    return " ".join([words[-1], *words[:-1]])


# Official sources (CVMI-Lab/SyntheticData at commit e47c27d) for what no installed package ships exactly:
# the head-initialisation templates (clip_benchmark ships 3 EuroSAT, 2 aircraft and 8 DTD templates, and
# words the food one without "a") and the CLIP Filter's prompts.
_OFFICIAL = "CVMI-Lab/SyntheticData src/classifier-tuning/src/templates/transfer_ds_template.py"
_OFFICIAL_TEMPLATES: dict[str, tuple[str, ...]] = {
    "eurosat": ("a centered satellite photo of {c}.",),
    "fgvc_aircraft": ("a photo of a {c}, a type of aircraft.",),
    "food101": ("a photo of a {c}, a type of food.",),
    "dtd": ("{c} texture.",),
    "birds": ("a photo of a {c}, a type of bird.",),
}
_OFFICIAL_CF = "official code (CVMI-Lab/SyntheticData src/classifier-tuning/src/select_glide_ims_by_clip.py)"
_ANALOGY_CF = "synthrec: the official filter has no prompt for this dataset; its head template's wording"
_OFFICIAL_NAMES = "CVMI-Lab/SyntheticData src/classifier-tuning/src/datasets/transfer_ds/transfer_datasets.py"

# open_clip (like CLIP's notebook and the official code) names two ImageNet class pairs alike: 657/744
# 'missile' and 836/837 'sunglasses'. Names key folders and prompt files, so they must be unique: those
# two take the first lemma of their WordNet synset ('projectile, missile'; 'sunglass'). The head keeps
# open_clip's text, as the paper's zero-shot head did.
_IMAGENET_NAME_OVERRIDES: dict[int, str] = {744: "projectile", 836: "sunglass"}

# Flowers-102: the official head (and CoOp's cat_to_name.json) spells three classes unlike clip_benchmark;
# official code's flowers_names in _OFFICIAL_NAMES (ordered by the 1-based class id read as a string).
_FLOWERS_HEAD_OVERRIDES: dict[int, str] = {15: "globe-flower", 59: "pink-yellow dahlia", 92: "ball moss"}

# EuroSAT's release folders (EuroSAT_RGB/2750), alphabetical = label order; CoOp's datasets/eurosat.py maps
# the same folders (NEW_CNAMES) to the generation names.
_EUROSAT_FOLDERS = (
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
)

# ImageNet-R's rendition types (its README: art, cartoons, graffiti, embroidery, origami, paintings,
# plastic objects, plush objects, sculptures, sketches, tattoos, toys, video game renditions, ...) as the
# OpenAI ImageNet templates word them; one basic prompt per rendition type.
_IMAGENET_R_STYLES = (
    "art of a {}.",
    "a cartoon {}.",
    "graffiti of a {}.",
    "a embroidered {}.",
    "a origami {}.",
    "a painting of a {}.",
    "a plastic {}.",
    "a plushie {}.",
    "a sculpture of a {}.",
    "a sketch of a {}.",
    "a tattoo of a {}.",
    "a toy {}.",
    "a {} in a video game.",
)

# PASCAL VOC's 20 classes in the devkit's order (the detection transfer's label space, Tables 10-11), named
# in words; the devkit's spelling is the folder (its XML <name>).
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
_VOC_WORDS = {"diningtable": "dining table", "pottedplant": "potted plant", "tvmonitor": "tv monitor"}

_TINY_CLASSES = ("red circle", "green square", "blue triangle", "yellow cross")
_TINY_TEMPLATES = ("a photo of a {c}.", "a drawing of a {c}.")


@dataclass(frozen=True)
class _Spec:
    title: str
    names: _Source
    templates: _Source
    head_names: _Source | None = None  # None: the head uses the generation names
    folders: _Source | None = None  # the release's class folders, where they are not the names
    name_overrides: dict[int, str] = field(default_factory=dict)
    head_overrides: dict[int, str] = field(default_factory=dict)
    prompt_templates: tuple[str, ...] = ("a photo of a {}.",)
    prompt_wrapper: str | None = None
    prompts_source: str = "synthrec default (paper's basic strategy: 'a photo of a [CLASS]')"
    le_input: str = "a {}"  # the official LE feeds 'a <name>', article written as is
    filter_template: str = "a photo of a {c}."
    filter_source: str = _OFFICIAL_CF


_CB_NAMES = "en_classnames.json"
_CB_TEMPLATES = "en_zeroshot_classification_templates.json"
_OPEN_CLIP_IMAGENET_TEMPLATES = _from_open_clip("SIMPLE_IMAGENET_TEMPLATES", call_with="{c}")
_CALTECH256_FOLDERS = _from_file("caltech256_folders.txt", "the release's folders")
_CUB_FOLDERS = _from_file("cub200_folders.txt", "the release's folders")

_SPECS: dict[str, _Spec] = {
    "birdsnap": _Spec(
        "Birdsnap",
        names=_from_file("birdsnap.txt", f"{_OFFICIAL_NAMES} birds_names"),
        templates=_inline(_OFFICIAL_TEMPLATES["birds"], _OFFICIAL),
        filter_template="a photo of a {c}, a type of bird.",
        filter_source=f"{_ANALOGY_CF} (the official filter's CUB prompt)",
    ),
    "caltech101": _Spec(
        "Caltech-101",
        # 102 classes with 'background' first: the folder order of 101_ObjectCategories, as clip_benchmark's
        # loader and the official code use it (torchvision's Caltech101 drops BACKGROUND_Google).
        names=_from_clip_benchmark(_CB_NAMES, "caltech101"),
        templates=_from_clip_benchmark(_CB_TEMPLATES, "caltech101"),
    ),
    "caltech256": _Spec(
        "Caltech-256",
        names=_derived(_CALTECH256_FOLDERS, _caltech256_name, "folder number and '-101' dropped, '-' as ' '"),
        # The official head uses the folder names as they are ('american-flag', 'bonsai-101').
        head_names=_derived(_CALTECH256_FOLDERS, _strip_number, "folder number dropped (official head)"),
        folders=_CALTECH256_FOLDERS,
        # No Caltech-256 set in the official templates: its fallback, simple_template.
        templates=_inline(
            ("a photo of a {c}.",), "CVMI-Lab/SyntheticData src/.../templates/simple_template.py"
        ),
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
    "cub200": _Spec(
        "CUB-200-2011",
        names=_derived(
            _CUB_FOLDERS, lambda f: _strip_number(f).replace("_", " "), "as the official cub_names"
        ),
        folders=_CUB_FOLDERS,
        templates=_inline(_OFFICIAL_TEMPLATES["birds"], _OFFICIAL),
        filter_template="a photo of a {c}, a type of bird.",
    ),
    "dtd": _Spec(
        "DTD (Describable Textures)",
        names=_from_file("dtd.txt"),
        templates=_inline(_OFFICIAL_TEMPLATES["dtd"], _OFFICIAL),
        filter_template="a photo of a {c} texture.",
        filter_source=f"{_ANALOGY_CF} (CLIP's first DTD template)",
    ),
    "eurosat": _Spec(
        "EuroSAT",
        names=_from_file("eurosat_prompt_names.txt", "CVMI-Lab/SyntheticData src/glide/glide_fsl.py"),
        # CoOp's names, which the official code uses for the head.
        head_names=_from_clip_benchmark(_CB_NAMES, "eurosat"),
        folders=_inline(_EUROSAT_FOLDERS, "the release's folders (EuroSAT_RGB), as CoOp datasets/eurosat.py"),
        templates=_inline(_OFFICIAL_TEMPLATES["eurosat"], _OFFICIAL),
        # Exactly the official wording, no full stop: glide_fsl.py's Real Guidance prompt and the wrapper
        # of glide_zsl.py's language-enhancement sentences.
        prompt_templates=("a centered satellite photo of {}",),
        prompt_wrapper="a centered satellite photo of {}",
        prompts_source="official code (CVMI-Lab/SyntheticData src/glide/glide_zsl.py, glide_fsl.py)",
        filter_template="a centered satellite photo of a {c}.",
    ),
    "fgvc_aircraft": _Spec(
        "FGVC-Aircraft",
        names=_from_file("fgvc_aircraft.txt"),
        templates=_inline(_OFFICIAL_TEMPLATES["fgvc_aircraft"], _OFFICIAL),
        filter_template="a photo of a {c}, a type of aircraft.",
    ),
    "flowers102": _Spec(
        "Oxford Flowers-102",
        names=_from_clip_benchmark(_CB_NAMES, "flowers"),
        head_overrides=_FLOWERS_HEAD_OVERRIDES,
        templates=_from_clip_benchmark(_CB_TEMPLATES, "flowers"),
        filter_template="a photo of a {c}, a type of flower.",
        filter_source=_ANALOGY_CF,
    ),
    "food101": _Spec(
        "Food-101",
        names=_from_file("food101.txt"),
        templates=_inline(_OFFICIAL_TEMPLATES["food101"], _OFFICIAL),
        filter_template="a photo of a {c}, a type of food.",
        filter_source=_ANALOGY_CF,
    ),
    "imagenet1k": _Spec(
        "ImageNet-1k",
        names=_from_open_clip("IMAGENET_CLASSNAMES"),
        name_overrides=_IMAGENET_NAME_OVERRIDES,
        folders=_from_timm("imagenet_synsets.txt"),
        # The 7-template ensemble, which is also the official code's imagenet_template.
        templates=_OPEN_CLIP_IMAGENET_TEMPLATES,
    ),
    "imagenet2k": _Spec(
        "IN-2K (ImageNet-1k + 1,000 ImageNet-21k classes)",
        names=_Source(
            _imagenet2k_names,
            lambda: (
                f"open_clip_torch {_version('open_clip_torch')} IMAGENET_CLASSNAMES (as imagenet1k) + "
                f"{IN2K_EXTRA} classes of timm {_version('timm')} imagenet12k_synsets.txt outside "
                f"ImageNet-1k, drawn by blake2b rank (seed {IN2K_SEED}), named by their first free "
                "WordNet lemma (imagenet_synset_to_lemma.txt)"
            ),
        ),
        head_names=_Source(
            _imagenet2k_heads, lambda: "open_clip's ImageNet-1k head text, then the added classes' lemmas"
        ),
        folders=_Source(
            _imagenet2k_folders,
            lambda: f"timm {_version('timm')} imagenet_synsets.txt + the drawn ImageNet-21k synsets",
        ),
        templates=_OPEN_CLIP_IMAGENET_TEMPLATES,
    ),
    "imagenet_r": _Spec(
        "ImageNet-R (200 classes)",
        names=_Source(
            _imagenet_r_names,
            lambda: (
                f"{_from_timm('imagenet_r_indices.txt').describe()} into open_clip_torch "
                f"{_version('open_clip_torch')} IMAGENET_CLASSNAMES (= the official name_imagenet_r)"
            ),
        ),
        folders=_from_timm("imagenet_r_synsets.txt"),
        templates=_OPEN_CLIP_IMAGENET_TEMPLATES,
        prompt_templates=_IMAGENET_R_STYLES,
        prompts_source="synthrec: ImageNet-R's rendition types as open_clip's OPENAI_IMAGENET_TEMPLATES",
        filter_template="a rendition of a {c}.",
        filter_source=f"{_ANALOGY_CF} (OpenAI's ImageNet template 'a rendition of a {{}}.')",
    ),
    "imagenet_sketch": _Spec(
        "ImageNet-Sketch",
        names=_from_open_clip("IMAGENET_CLASSNAMES"),
        name_overrides=_IMAGENET_NAME_OVERRIDES,
        folders=_from_timm("imagenet_synsets.txt"),
        templates=_OPEN_CLIP_IMAGENET_TEMPLATES,
        prompt_templates=("a sketch of a {}.",),
        # src/glide/glide_zsl.py has "sketch of " + sentence commented out; with the article it reads
        # "a sketch of a white airplane ...".
        prompt_wrapper="a sketch of {}",
        prompts_source="official code's commented wrapper (CVMI-Lab/SyntheticData src/glide/glide_zsl.py)",
        filter_template="a sketch of a {c}.",
        filter_source=f"{_ANALOGY_CF} (the sketch wording of the generation prompts)",
    ),
    "oxford_pets": _Spec(
        "Oxford-IIIT Pets",
        names=_from_clip_benchmark(_CB_NAMES, "pets"),
        templates=_from_clip_benchmark(_CB_TEMPLATES, "pets"),
        filter_template="a photo of a {c}, a type of pet.",
        filter_source=_ANALOGY_CF,
    ),
    "pascal_voc": _Spec(
        "PASCAL VOC (20 classes)",
        names=_inline([_VOC_WORDS.get(n, n) for n in VOC_CLASSES], "the VOC devkit's classes, in words"),
        folders=_inline(VOC_CLASSES, "the VOC devkit's class names (Annotations <name>)"),
        templates=_inline(("a photo of a {c}.",), "synthrec (no paper head for VOC)"),
        filter_source=f"{_ANALOGY_CF} ('a photo of a {{c}}.')",
    ),
    "stanford_cars": _Spec(
        "Stanford Cars",
        names=_from_file("stanford_cars.txt"),
        head_names=_derived(
            _from_file("stanford_cars.txt"), _year_first, "year first as CoOp and the official head"
        ),
        templates=_from_clip_benchmark(_CB_TEMPLATES, "cars"),
        filter_source=f"{_ANALOGY_CF} ('a photo of a {{c}}.', its first)",
    ),
    "sun397": _Spec(
        "SUN397",
        names=_from_file("sun397.txt"),
        head_names=_from_file("sun397_coop_names.txt", "CoOp, as the official head"),
        templates=_from_clip_benchmark(_CB_TEMPLATES, "sun397"),
    ),
    "tiny": _Spec(
        "tiny (offline demo: four coloured shapes)",
        names=_inline(_TINY_CLASSES, "synthrec.presets (offline demo; the drawn real set uses these names)"),
        templates=_inline(_TINY_TEMPLATES, "synthrec.presets (offline demo)"),
        filter_source="synthrec.presets (offline demo)",
    ),
}

# The 17 datasets of the paper's Table 1, in its row order, with its task type and zero-shot CLIP RN50 /
# ViT-B/16 top-1 (the baselines its "+SYN" columns improve on).
TABLE1: tuple[tuple[str, str, float, float], ...] = (
    ("cifar10", "object", 70.31, 90.80),
    ("cifar100", "object", 35.35, 68.22),
    ("caltech101", "object", 86.09, 92.98),
    ("caltech256", "object", 73.36, 80.14),
    ("imagenet1k", "object", 60.33, 68.75),
    ("sun397", "scene", 58.51, 62.51),
    ("fgvc_aircraft", "fine-grained", 17.34, 24.81),
    ("birdsnap", "fine-grained", 34.33, 41.90),
    ("stanford_cars", "fine-grained", 55.63, 65.23),
    ("cub200", "fine-grained", 46.69, 55.23),
    ("flowers102", "fine-grained", 66.08, 71.30),
    ("food101", "fine-grained", 80.34, 88.75),
    ("oxford_pets", "fine-grained", 85.80, 89.10),
    ("dtd", "texture", 42.23, 44.39),
    ("eurosat", "satellite", 37.51, 47.77),
    ("imagenet_sketch", "robustness", 33.29, 46.20),
    ("imagenet_r", "robustness", 56.16, 74.01),
)


def _check(preset: Preset) -> Preset:
    # Guards the data files and the packages' lists: a broken preset should fail here, not mid-pipeline.
    where = f"label preset {preset.name!r}"
    names = preset.names
    if not names:
        raise PresetError(f"{where} has no classes")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PresetError(f"{where} names several classes alike: {dupes}")
    for template in (*preset.templates, preset.filter_template):
        if template.count("{c}") != 1:
            raise PresetError(f"{where}: template {template!r} must contain '{{c}}' exactly once")
    for label, text in (
        *(("prompt_templates", t) for t in preset.prompt_templates),
        ("le_input", preset.le_input),
    ):
        if text.count("{}") != 1:
            raise PresetError(f"{where}: {label} {text!r} must contain '{{}}' exactly once")
    if preset.prompt_wrapper is not None and preset.prompt_wrapper.count("{}") != 1:
        wrapper = preset.prompt_wrapper
        raise PresetError(f"{where}: prompt_wrapper {wrapper!r} must contain '{{}}' exactly once")
    return preset


def _with_overrides(values: Sequence[str], overrides: dict[int, str]) -> list[str]:
    out = list(values)
    for index, override in overrides.items():
        out[index] = override
    return out


@functools.cache
def _load(name: str) -> Preset:
    spec = _SPECS[name]
    names = _with_overrides(spec.names.load(), spec.name_overrides)
    heads_source = spec.head_names.load() if spec.head_names is not None else spec.names.load()
    heads = _with_overrides(heads_source, spec.head_overrides)
    folders = list(spec.folders.load()) if spec.folders is not None else [""] * len(names)
    for what, values in (("head names", heads), ("folders", folders)):
        if len(values) != len(names):
            raise PresetError(f"label preset {name!r}: {len(names)} class names but {len(values)} {what}")
    provenance = {"classes": spec.names.describe(), "templates": spec.templates.describe()}
    if spec.name_overrides:
        overrides = ", ".join(f"{i}: {n!r}" for i, n in sorted(spec.name_overrides.items()))
        provenance["classes"] += f"; where the source repeats a name: {overrides}"
    if spec.head_names is not None:
        provenance["head_names"] = spec.head_names.describe()
    elif spec.name_overrides or spec.head_overrides:
        provenance["head_names"] = spec.names.describe()
    else:
        provenance["head_names"] = "same as classes"
    if spec.head_overrides:
        overrides = ", ".join(f"{i}: {n!r}" for i, n in sorted(spec.head_overrides.items()))
        provenance["head_names"] += f"; official head spelling at {overrides} ({_OFFICIAL_NAMES})"
    if spec.folders is not None:
        provenance["folders"] = spec.folders.describe()
    provenance["prompts"] = spec.prompts_source
    provenance["filter_template"] = spec.filter_source
    return _check(
        Preset(
            name=name,
            title=spec.title,
            classes=tuple(LabelClass(n, h, f) for n, h, f in zip(names, heads, folders, strict=True)),
            templates=tuple(spec.templates.load()),
            prompt_templates=spec.prompt_templates,
            prompt_wrapper=spec.prompt_wrapper,
            le_input=spec.le_input,
            filter_template=spec.filter_template,
            provenance=provenance,
        )
    )


def get_preset(name: str) -> Preset:
    """The preset ``name`` (or an alias); loaded once per process."""
    return _load(canonical_preset_name(name))
