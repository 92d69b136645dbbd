"""The toy world: one coloured shape (and sometimes a grey pebble) on a muted background, 64x64 px.

Everything here is a pure function of a ``numpy.random.Generator``: the same seed draws the same pictures.
``draw`` renders a ``Scene`` (what was drawn: colour, shape, box, background) so the drawing program is its
own oracle for the images it makes; ``detect`` is an independent colour/shape detector for pictures the
program did not draw (a generator's output), built from pixel statistics only, never from a learned model.

The world has every combination of ``COLOURS`` and ``SHAPES`` (``WORLD_CLASSES``); the demo's label space,
``LABEL_CLASSES``, is eight of them in which every colour and every shape occurs twice, so neither colour
nor shape alone names a class.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

IMAGE_SIZE = 64
_SUPERSAMPLE = 4  # shapes are drawn at 4x and downsampled: smooth edges, like a photo rather than pixels

#: Colour name -> hue in degrees (HSV). Backgrounds are unsaturated, so hue alone names an object's colour.
COLOURS: dict[str, float] = {"red": 0.0, "yellow": 55.0, "green": 125.0, "blue": 225.0}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
WORLD_CLASSES: tuple[str, ...] = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
#: The demo's label space, in class-index order: a ring in which each colour and each shape occurs twice.
LABEL_CLASSES: tuple[str, ...] = (
    "red circle",
    "red square",
    "green square",
    "green triangle",
    "blue triangle",
    "blue cross",
    "yellow cross",
    "yellow circle",
)
BACKGROUNDS: tuple[str, ...] = ("plain", "gradient", "horizon", "stripes")
SIZES: tuple[str, ...] = ("small", "medium", "large")
_SIZE_PX = {"small": (14, 22), "medium": (23, 32), "large": (33, 44)}


def split_class(name: str) -> tuple[str, str]:
    """'red circle' -> ('red', 'circle'); ValueError for a name that is not a world class."""
    parts = name.split()
    if len(parts) != 2 or parts[0] not in COLOURS or parts[1] not in SHAPES:
        raise ValueError(f"{name!r} is not a toy-world class; the world has: {', '.join(WORLD_CLASSES)}")
    return parts[0], parts[1]


@dataclass(frozen=True)
class Thing:
    """One drawn object: its class and its box in pixels (x0, y0, x1, y1; inclusive-exclusive)."""

    colour: str
    shape: str
    box: tuple[int, int, int, int]

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def size(self) -> str:
        side = self.box[2] - self.box[0]
        return next(s for s, (lo, hi) in _SIZE_PX.items() if side <= hi) if side <= 44 else "large"

    @property
    def place(self) -> str:
        """Where it sits, in words: 'in the top left', 'in the middle', 'at the bottom', ..."""
        cx = (self.box[0] + self.box[2]) / 2 / IMAGE_SIZE
        cy = (self.box[1] + self.box[3]) / 2 / IMAGE_SIZE
        col = "left" if cx < 0.4 else "right" if cx > 0.6 else ""
        row = "top" if cy < 0.4 else "bottom" if cy > 0.6 else ""
        if row and col:
            return f"in the {row} {col}"
        if row:
            return f"at the {row}"
        if col:
            return f"on the {col}"
        return "in the middle"


@dataclass(frozen=True)
class Scene:
    """Everything the drawing program knows about one picture."""

    things: tuple[Thing, ...]
    background: str  # one of BACKGROUNDS
    tone: str  # 'light' or 'dark' background
    pebble: bool  # a small grey distractor was drawn
    size: int = IMAGE_SIZE
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def main(self) -> Thing:
        return self.things[0]


# ----------------------------------------------------------------------------------------- drawing


def _rgb(hue: float, sat: float, val: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((hue % 360) / 360, sat, val)
    return round(r * 255), round(g * 255), round(b * 255)


def _background(rng: np.random.Generator, kind: str, tone: str, size: int) -> np.ndarray:
    """A muted (saturation <= 0.22) background as a float HxWx3 array in 0..255."""
    import numpy as np

    def muted() -> np.ndarray:
        val = rng.uniform(0.62, 0.95) if tone == "light" else rng.uniform(0.22, 0.45)
        return np.array(_rgb(rng.uniform(0, 360), rng.uniform(0.0, 0.22), val), dtype=np.float32)

    a = muted()
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    if kind == "plain":
        img = np.broadcast_to(a, (size, size, 3)).copy()
    elif kind == "gradient":
        b = muted()
        angle = rng.uniform(0, 2 * math.pi)
        t = (np.cos(angle) * (xs - 0.5) + np.sin(angle) * (ys - 0.5)) / 1.42 + 0.5
        img = a * (1 - t[..., None]) + b * t[..., None]
    elif kind == "horizon":  # two tones split by a soft horizontal line, like ground and sky
        b = muted()
        y0 = rng.uniform(0.35, 0.75)
        t = 1 / (1 + np.exp(-(ys - y0) * 40))
        img = a * (1 - t[..., None]) + b * t[..., None]
    elif kind == "stripes":
        b = a + rng.uniform(-28, 28)
        period = rng.uniform(6, 14)
        phase = rng.uniform(0, period)
        on = (
            ((xs * size + phase) // period % 2 == 0)
            if rng.random() < 0.5
            else ((ys * size + phase) // period % 2 == 0)
        )
        img = np.where(on[..., None], a, b)
    else:
        raise ValueError(f"unknown background {kind!r}; one of {BACKGROUNDS}")
    noise = rng.normal(0.0, rng.uniform(2.0, 9.0), size=(size, size, 3)).astype(np.float32)
    return np.clip(img + noise, 0, 255)


def shape_mask(shape: str, box: tuple[float, float, float, float], size: int) -> Image.Image:
    """An anti-aliased 8-bit mask of ``shape`` filling ``box`` (in output pixels)."""
    from PIL import Image, ImageDraw

    s = _SUPERSAMPLE
    big = Image.new("L", (size * s, size * s), 0)
    draw = ImageDraw.Draw(big)
    x0, y0, x1, y1 = (v * s for v in box)
    if shape == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=255)
    elif shape == "square":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=255)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)], fill=255)
    elif shape == "cross":
        bar = (x1 - x0) * 0.3
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        draw.rectangle((cx - bar / 2, y0, cx + bar / 2, y1 - 1), fill=255)
        draw.rectangle((x0, cy - bar / 2, x1 - 1, cy + bar / 2), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; one of {SHAPES}")
    return big.resize((size, size), Image.Resampling.BOX)


def thing_alpha(shape: str, box: tuple[int, int, int, int], size: int = IMAGE_SIZE) -> np.ndarray:
    """The coverage (0..1, float HxW) of ``shape`` drawn in ``box``: exactly the alpha ``paint`` uses."""
    import numpy as np

    return np.asarray(shape_mask(shape, box, size), dtype=np.float32) / 255


def _place(rng: np.random.Generator, side: int, size: int, avoid: tuple[int, int, int, int] | None) -> tuple:
    for _ in range(30):
        x0 = int(rng.integers(1, size - side))
        y0 = int(rng.integers(1, size - side))
        box = (x0, y0, x0 + side, y0 + side)
        if avoid is None or not _overlap(box, avoid):
            return box
    return box


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def paint(
    image: np.ndarray, shape: str, box: tuple[int, int, int, int], rgb: tuple[float, float, float]
) -> np.ndarray:
    """``image`` with ``shape`` in colour ``rgb`` alpha-blended into ``box`` (float HxWx3, 0..255)."""
    import numpy as np

    alpha = thing_alpha(shape, box, image.shape[0])[..., None]
    return image * (1 - alpha) + np.asarray(rgb, dtype=np.float32) * alpha


def object_rgb(rng: np.random.Generator, colour: str) -> tuple[int, int, int]:
    """A saturated shade of ``colour``: hue within +-10 degrees, saturation 0.65-1, value 0.6-1."""
    return _rgb(COLOURS[colour] + rng.uniform(-10, 10), rng.uniform(0.65, 1.0), rng.uniform(0.6, 1.0))


def random_scene(
    rng: np.random.Generator,
    class_name: str,
    *,
    size_word: str | None = None,
    others: int = 0,
    pool: tuple[str, ...] = WORLD_CLASSES,
    size: int = IMAGE_SIZE,
) -> Scene:
    """A scene whose main object is ``class_name`` (random size, place, background; a grey pebble in 30 %
    of scenes); ``others`` more objects of random classes from ``pool``, not overlapping (for detection)."""
    colour, shape = split_class(class_name)
    size_word = size_word or SIZES[int(rng.integers(len(SIZES)))]
    lo, hi = _SIZE_PX[size_word]
    if others:
        hi = min(hi, 28)
        lo = min(lo, hi)
    side = int(rng.integers(lo, hi + 1))
    things = [Thing(colour, shape, _place(rng, side, size, None))]
    for _ in range(others):
        other_colour, other_shape = split_class(pool[int(rng.integers(len(pool)))])
        side = int(rng.integers(14, 26))
        box = things[-1].box
        for _attempt in range(30):
            box = _place(rng, side, size, None)
            if not any(_overlap(box, t.box) for t in things):
                things.append(Thing(other_colour, other_shape, box))
                break
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    tone = "light" if rng.random() < 0.75 else "dark"
    return Scene(tuple(things), background, tone, bool(rng.random() < 0.3), size)


def draw(rng: np.random.Generator, scene: Scene) -> Image.Image:
    """Render ``scene`` (background, pebble, objects) with colours and noise drawn from ``rng``."""
    import numpy as np
    from PIL import Image

    img = _background(rng, scene.background, scene.tone, scene.size)
    if scene.pebble:
        side = int(rng.integers(6, 12))
        box = _place(rng, side, scene.size, scene.main.box)
        grey = float(rng.uniform(90, 200))
        img = paint(
            img, "circle", box, (grey, grey * rng.uniform(0.95, 1.05), grey * rng.uniform(0.95, 1.05))
        )
    for thing in scene.things:
        img = paint(img, thing.shape, thing.box, object_rgb(rng, thing.colour))
    return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8), "RGB")


def draw_class(rng: np.random.Generator, class_name: str, **kw: Any) -> tuple[Image.Image, Scene]:
    """A picture of one ``class_name`` object and the scene it shows."""
    scene = random_scene(rng, class_name, **kw)
    return draw(rng, scene), scene


# ---------------------------------------------------------------------------------------- the detector


@dataclass(frozen=True)
class Detection:
    colour: str | None  # None: no saturated object found
    shape: str | None
    fill: float = 0.0  # object pixels / box pixels
    pixels: int = 0

    @property
    def name(self) -> str | None:
        return f"{self.colour} {self.shape}" if self.colour and self.shape else None


def detect(image: Image.Image) -> Detection:
    """Colour and shape of the most saturated object in ``image``, from pixel statistics only.

    Colour: the circular mean hue of the saturated pixels, nearest of ``COLOURS``. Shape: from the object's
    mask inside its bounding box: how much of the box it fills (square ~1, circle ~0.79, triangle ~0.5,
    cross ~0.5), how the filled width grows from top to bottom (a triangle's does) and whether the box's
    corners are empty (a cross's are, a circle's partly). Accuracy on the drawn test set is measured by
    the tests (``tests/learning``); on a generator's blurry output it is the world's best guess.
    """
    import numpy as np

    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    mx, mn = rgb.max(-1), rgb.min(-1)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0)
    candidates = (sat > 0.38) & (mx > 0.3)
    if candidates.any():  # the object's own saturation sets the bar: half-covered edge pixels stay out
        candidates &= sat > 0.65 * float(np.percentile(sat[candidates], 90))
    mask = _largest_blob(candidates)
    n = int(mask.sum())
    if n < 12:
        return Detection(None, None, 0.0, n)
    r, g, b = rgb[mask].T
    hsv = np.array([colorsys.rgb_to_hsv(*p) for p in np.stack([r, g, b], 1)[:: max(1, n // 400)]])
    angles = hsv[:, 0] * 2 * math.pi
    weights = hsv[:, 1]
    hue = math.degrees(math.atan2((np.sin(angles) * weights).sum(), (np.cos(angles) * weights).sum())) % 360
    colour = min(COLOURS, key=lambda c: abs((COLOURS[c] - hue + 180) % 360 - 180))
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    box = mask[y0:y1, x0:x1].astype(np.float32)
    h, w = box.shape
    fill = float(box.mean())
    widths = box.mean(1)  # filled fraction of each row, top to bottom
    third = max(1, h // 3)
    top, bottom = float(widths[:third].mean()), float(widths[-third:].mean())
    cs = max(1, round(min(h, w) * 0.2))
    corners = float(
        np.mean([box[:cs, :cs].mean(), box[:cs, -cs:].mean(), box[-cs:, :cs].mean(), box[-cs:, -cs:].mean()])
    )
    centre = float(box[h // 2 - max(1, h // 8) : h // 2 + max(1, h // 8) + 1, :].mean())
    if bottom - top > 0.35:
        shape = "triangle"
    elif corners < 0.12 and centre > 0.8 and fill < 0.65:
        shape = "cross"
    elif fill > 0.9 and corners > 0.8:
        shape = "square"
    else:
        shape = "circle" if corners < 0.6 else "square"
    return Detection(colour, shape, fill, n)


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask (a flood fill; images are tiny)."""
    import numpy as np

    seen = np.zeros_like(mask, dtype=bool)
    best: list[tuple[int, int]] = []
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if seen[y0, x0]:
            continue
        stack, blob = [(int(y0), int(x0))], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            blob.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        if len(blob) > len(best):
            best = blob
    out = np.zeros_like(mask, dtype=bool)
    if best:
        ys, xs = zip(*best, strict=True)
        out[list(ys), list(xs)] = True
    return out
