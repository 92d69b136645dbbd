"""Resolve a spec's label space (preset or explicit classes, subset, overrides) into the one list of
classes every stage uses, in class-index order.

Class index i means the same class in prompts, shards, features, the kept index, the classifier head and
the real-data mapping. ``name`` is the class's identity (prompts, the CLIP Filter's prompts, folder
matching); ``head_name`` is the text of the CLIP zero-shot head; ``folder`` is the release's folder name
where a preset knows it (matched to real data like the names).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from synthrec.api import LabelSpace

DEFAULT_PROMPT_TEMPLATE = "a photo of a {}."
DEFAULT_TEMPLATES = ("a photo of a {c}.",)
DEFAULT_FILTER_TEMPLATE = "a photo of a {c}."
DEFAULT_LE_INPUT = "a {}"


@dataclass(frozen=True)
class ResolvedClass:
    index: int
    name: str
    head_name: str
    folder: str = ""

    @property
    def slug(self) -> str:
        return class_slug(self.name, self.index)


@dataclass(frozen=True)
class ResolvedLabels:
    classes: tuple[ResolvedClass, ...]
    templates: tuple[str, ...]  # '{c}' placeholder, for the zero-shot head
    prompt_templates: tuple[str, ...]  # '{}' placeholder, basic strategy: one prompt per template
    prompt_wrapper: str | None  # '{}' placeholder, language-enhancement sentences
    le_input: str  # '{}' placeholder, input of the word-to-sentence model
    source: str  # 'preset:eurosat' or 'explicit'
    filter_template: str = DEFAULT_FILTER_TEMPLATE  # '{c}' placeholder, the CLIP Filter's prompt per class

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def head_names(self) -> list[str]:
        return [c.head_name for c in self.classes]


def resolve_labels(labels: LabelSpace) -> ResolvedLabels:
    """The classes and templates of a label space; raises ValueError naming the bad subset entry."""
    if labels.preset is not None:
        from synthrec.presets import get_preset

        preset = get_preset(labels.preset)
        rows = [(c.name, c.head_name or c.name, c.folder) for c in preset.classes]
        if labels.subset:
            by_name = {row[0]: row for row in rows}
            missing = [s for s in labels.subset if s not in by_name]
            if missing:
                raise ValueError(
                    f"labels.subset: {', '.join(map(repr, missing))} not in preset {preset.name!r} "
                    f"(its classes start with {', '.join(map(repr, list(by_name)[:5]))}, ...)"
                )
            keep = set(labels.subset)
            rows = [row for row in rows if row[0] in keep]
        templates = tuple(labels.templates or preset.templates)
        prompt_templates = preset.prompt_templates
        wrapper, le_input, source = preset.prompt_wrapper, preset.le_input, f"preset:{preset.name}"
        filter_template = labels.filter_template or preset.filter_template
    else:
        rows = [(c.name, c.head_name or c.name, "") for c in labels.classes or []]
        templates = tuple(labels.templates or DEFAULT_TEMPLATES)
        prompt_templates = (DEFAULT_PROMPT_TEMPLATE,)
        wrapper, le_input, source = None, DEFAULT_LE_INPUT, "explicit"
        filter_template = labels.filter_template or DEFAULT_FILTER_TEMPLATE
    if labels.prompt_template:
        prompt_templates = (labels.prompt_template,)
    if not rows:
        raise ValueError("the label space has no classes")
    classes = tuple(ResolvedClass(i, name, head, folder) for i, (name, head, folder) in enumerate(rows))
    return ResolvedLabels(classes, templates, prompt_templates, wrapper, le_input, source, filter_template)


@dataclass(frozen=True)
class FilterPrompts:
    """The texts the CLIP Filter scores each image against: per class the mean of the embeddings of
    ``templates`` filled with ``names[c]``."""

    mode: str  # 'filter-template' | 'head-templates'
    names: tuple[str, ...]
    templates: tuple[str, ...]  # '{c}' placeholder

    def prompts(self, index: int) -> list[str]:
        return [t.replace("{c}", self.names[index]) for t in self.templates]

    def describe(self) -> dict[str, object]:
        """For the dataset card and ``synthrec plan``."""
        return {
            "mode": self.mode,
            "names": "generation names" if self.mode == "filter-template" else "head names",
            "templates": list(self.templates),
            "example": self.prompts(0),
        }


def filter_prompts(labels: ResolvedLabels, mode: str) -> FilterPrompts:
    """filter-template (the official CLIP Filter): one prompt per class, the label space's filter template
    with the generation name; head-templates: the zero-shot head's template ensemble with the head names."""
    if mode == "filter-template":
        return FilterPrompts(mode, tuple(labels.names), (labels.filter_template,))
    if mode == "head-templates":
        return FilterPrompts(mode, tuple(labels.head_names), labels.templates)
    raise ValueError(f"unknown filter prompts {mode!r}; use filter-template or head-templates")


_UNSAFE = re.compile(r"[^a-z0-9]+")


def class_slug(name: str, index: int) -> str:
    """A safe object-key / folder component for a class: ASCII, no '/', no '..', bounded length, and
    unique because it carries the class index (two names may fold to the same text)."""
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    text = _UNSAFE.sub("-", folded).strip("-")[:48] or "class"
    return f"{index:04d}-{text}"


def normalise_folder_name(name: str) -> str:
    """How real-data folder names are matched to class names: case-insensitive, '_' and '-' as spaces."""
    return " ".join(re.split(r"[\s_\-]+", unicodedata.normalize("NFKC", name).casefold())).strip()
