"""The tiny "real" dataset: shapes drawn procedurally, one ImageFolder per split (``tiny://real/...``)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from synthrec.tiny.layout import IMAGE_SIZE, REAL_TEST_PER_CLASS, REAL_TRAIN_PER_CLASS, TINY_CLASSES

_BASE_COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 210, 40),
}


def class_folder_name(class_name: str) -> str:
    """The ImageFolder folder name of a class: spaces become underscores ('red circle' -> 'red_circle')."""
    return class_name.replace(" ", "_")


def build_real_dataset(out: Path, seed: int) -> None:
    import numpy as np

    rng = random.Random(seed + 6)
    noise = np.random.default_rng(seed + 6)
    for split, count in (("train", REAL_TRAIN_PER_CLASS), ("test", REAL_TEST_PER_CLASS)):
        for class_name in TINY_CLASSES:
            folder = out / split / class_folder_name(class_name)
            folder.mkdir(parents=True)
            for i in range(count):
                image = _draw_shape(class_name, rng, noise)
                image.save(folder / f"{i:04d}.png", optimize=False)


def _draw_shape(class_name: str, rng: random.Random, noise: Any) -> Any:
    import numpy as np
    from PIL import Image, ImageDraw

    colour_name, shape = class_name.split(" ")
    background = np.array([rng.randint(150, 235) for _ in range(3)], dtype=np.int16)
    pixels = background + noise.integers(-18, 19, size=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.int16)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)

    colour = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in _BASE_COLOURS[colour_name])
    size = rng.randint(18, 40)
    x0 = rng.randint(2, IMAGE_SIZE - size - 2)
    y0 = rng.randint(2, IMAGE_SIZE - size - 2)
    x1, y1 = x0 + size, y0 + size
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=colour)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=colour)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=colour)
    elif shape == "cross":
        bar = max(4, size // 4)
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        draw.rectangle((cx - bar // 2, y0, cx + bar // 2, y1), fill=colour)
        draw.rectangle((x0, cy - bar // 2, x1, cy + bar // 2), fill=colour)
    else:  # pragma: no cover - TINY_CLASSES only names the shapes above
        raise ValueError(f"no drawing for shape {shape!r} of class {class_name!r}")
    return image
