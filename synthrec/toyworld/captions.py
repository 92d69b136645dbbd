"""How the toy world is talked about: the captions each tiny model learns from.

- ``generator_caption``: what the text-to-image model is trained on: the class name alone or in a photo
  template, a sentence that is true of the picture (size, place, background), or an everyday context
  that the picture does not show (the kind of sentence Language Enhancement writes).
- ``sentence``: what the word-to-sentence model learns to write for "a <class>": the same sentences,
  with random attributes, always containing the class name.
- ``web_caption``: what the tiny CLIP sees in "pre-training": loose captions in which a shape has
  synonyms and three of the label space's four shape names never occur (squares are "boxes" and
  "blocks", triangles "pyramids" and "wedges", crosses "plus signs"). The image tower learns to tell
  every shape apart; the text tower does not know "square", "triangle" or "cross", so zero-shot
  classification with the label space's names is imperfect. That is the toy version of CLIP's real
  weakness on label names that web captions rarely use.

All functions draw from a ``numpy.random.Generator`` and are deterministic for a given state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from synthrec.toyworld.world import COLOURS, SHAPES, SIZES, Scene, split_class

if TYPE_CHECKING:
    import numpy as np

#: Photo templates (the label space's zero-shot templates use the first two).
PHOTO_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a drawing of a {}.",
    "a {}",
    "{}",
    "a picture of a {}.",
)
#: Everyday contexts a picture of the toy world does not show (like CommonGen sentences).
CONTEXTS: tuple[str, ...] = (
    "a {} on a wooden table.",
    "a {} painted on a wall.",
    "a sticker of a {} on a laptop.",
    "a {} on a poster in the street.",
    "a child drawing a {}.",
    "a {} printed on a t-shirt.",
    "a {} on a flag in the wind.",
    "a {} in a picture book.",
    "a big {} on a sign by the road.",
    "a {} drawn in the sand.",
)
_BACKGROUND_WORDS = {"plain": "plain", "gradient": "soft", "horizon": "two-tone", "stripes": "striped"}
_PLACES = (
    "in the top left",
    "in the top right",
    "in the bottom left",
    "in the bottom right",
    "at the top",
    "at the bottom",
    "on the left",
    "on the right",
    "in the middle",
)

# The tiny CLIP's pre-training vocabulary: shape -> (words, probabilities). The label space says
# "triangle" and "cross", which the captions rarely use.
WEB_SHAPE_WORDS: dict[str, tuple[tuple[str, ...], tuple[float, ...]]] = {
    "circle": (("circle", "disc", "dot"), (0.5, 0.3, 0.2)),
    "square": (("box", "block"), (0.5, 0.5)),
    "triangle": (("pyramid", "wedge"), (0.5, 0.5)),
    "cross": (("plus sign", "plus"), (0.5, 0.5)),
}


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def describe(rng: np.random.Generator, scene: Scene, name: str) -> str:
    """A sentence that is true of ``scene`` (its main object called ``name``)."""
    thing = scene.main
    background = f"{scene.tone} {_BACKGROUND_WORDS[scene.background]}"
    forms = [
        f"a {thing.size} {name} {thing.place}.",
        f"a {name} on a {background} background.",
        f"a {thing.size} {name} {thing.place} on a {background} background.",
        f"a {name} {thing.place}.",
    ]
    if scene.pebble:
        forms.append(f"a {name} next to a grey pebble.")
    return _pick(rng, forms)


def sentence(rng: np.random.Generator, name: str) -> str:
    """A sentence about a ``name`` with random attributes or an everyday context (the LE model's target)."""
    r = rng.random()
    if r < 0.45:
        size, place = _pick(rng, SIZES), _pick(rng, _PLACES)
        background = f"{_pick(rng, ('light', 'dark'))} {_pick(rng, list(_BACKGROUND_WORDS.values()))}"
        return _pick(
            rng,
            [
                f"a {size} {name} {place}.",
                f"a {name} on a {background} background.",
                f"a {size} {name} {place} on a {background} background.",
                f"a {name} {place}.",
                f"a {name} next to a grey pebble.",
            ],
        )
    if r < 0.85:
        return _pick(rng, CONTEXTS).format(name)
    return _pick(rng, PHOTO_TEMPLATES[:2]).format(name)


def generator_caption(rng: np.random.Generator, scene: Scene, name: str) -> str:
    """A training caption for the text-to-image model: a photo template, a true description, or a context."""
    r = rng.random()
    if r < 0.3:
        return _pick(rng, PHOTO_TEMPLATES).format(name)
    if r < 0.75:
        return describe(rng, scene, name)
    return _pick(rng, CONTEXTS).format(name)


def confusable(rng: np.random.Generator, name: str) -> str:
    """A class that differs from ``name`` in colour or in shape: what a generator draws by mistake."""
    colour, shape = split_class(name)
    if rng.random() < 0.5:
        return f"{colour} {_pick(rng, [s for s in SHAPES if s != shape])}"
    return f"{_pick(rng, [c for c in COLOURS if c != colour])} {shape}"


def web_caption(rng: np.random.Generator, name: str) -> str:
    """A loose "web" caption of a picture of ``name`` for the tiny CLIP (see the module docstring)."""
    colour, shape = split_class(name)
    words, probs = WEB_SHAPE_WORDS[shape]
    shape_word = words[int(rng.choice(len(words), p=probs))]
    r = rng.random()
    if r < 0.7:
        return _pick(rng, ("a photo of a {}.", "a {}.", "a drawing of a {}.", "a picture of the {}.")).format(
            f"{colour} {shape_word}"
        )
    if r < 0.85:
        return _pick(rng, ("something {}.", "a {} object.", "a {} thing on a background.")).format(colour)
    if r < 0.95:
        return _pick(rng, ("a {}.", "a photo of a {}.", "the shape of a {}.")).format(shape_word)
    other_colour, other_shape = split_class(confusable(rng, name))  # a mislabelled picture
    return f"a photo of a {other_colour} {WEB_SHAPE_WORDS[other_shape][0][-1]}."
