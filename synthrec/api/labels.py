"""Resolve a spec's label space (preset or explicit classes, subset, overrides) into the one list of
classes every stage uses, in class-index order.

Class index i means the same class in prompts, shards, features, the kept index, the classifier head and
the real-data mapping. ``name`` is the class's identity (prompts, folder matching); ``head_name`` is the
text of the CLIP zero-shot head.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from synthrec.api import LabelSpace

DEFAULT_PROMPT_TEMPLATE = "a photo of a {}."
DEFAULT_TEMPLATES = ("a photo of a {c}.",)
DEFAULT_LE_INPUT = "a {}"


@dataclass(frozen=True)
class ResolvedClass:
    index: int
    name: str
    head_name: str

    @property
    def slug(self) -> str:
        return class_slug(self.name, self.index)


@dataclass(frozen=True)
class ResolvedLabels:
    classes: tuple[ResolvedClass, ...]
    templates: tuple[str, ...]  # '{c}' placeholder, for the zero-shot head
    prompt_template: str  # '{}' placeholder, basic strategy
    prompt_wrapper: str | None  # '{}' placeholder, language-enhancement sentences
    le_input: str  # '{}' placeholder, input of the word-to-sentence model
    source: str  # 'preset:eurosat' or 'explicit'

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
        pairs = [(c.name, c.head_name or c.name) for c in preset.classes]
        if labels.subset:
            by_name = {name: (name, head) for name, head in pairs}
            missing = [s for s in labels.subset if s not in by_name]
            if missing:
                raise ValueError(
                    f"labels.subset: {', '.join(map(repr, missing))} not in preset {preset.name!r} "
                    f"(its classes start with {', '.join(map(repr, list(by_name)[:5]))}, ...)"
                )
            keep = set(labels.subset)
            pairs = [p for p in pairs if p[0] in keep]
        templates = tuple(labels.templates or preset.templates)
        prompt_template = labels.prompt_template or preset.prompt_template
        wrapper, le_input, source = preset.prompt_wrapper, preset.le_input, f"preset:{preset.name}"
    else:
        pairs = [(c.name, c.head_name or c.name) for c in labels.classes or []]
        templates = tuple(labels.templates or DEFAULT_TEMPLATES)
        prompt_template = labels.prompt_template or DEFAULT_PROMPT_TEMPLATE
        wrapper, le_input, source = None, DEFAULT_LE_INPUT, "explicit"
    if not pairs:
        raise ValueError("the label space has no classes")
    classes = tuple(ResolvedClass(i, name, head) for i, (name, head) in enumerate(pairs))
    return ResolvedLabels(classes, templates, prompt_template, wrapper, le_input, source)


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
