"""The toy world's CLIP: a tiny open_clip ModifiedResNet ("RN-tiny") trained contrastively on drawn pictures
and loose "web" captions (``captions.web_caption``), saved as open_clip config + safetensors.

The captions rarely say "triangle" or "cross" (mostly "pyramid", "wedge", "plus"), so the image tower
learns every shape while the text tower hardly knows two of the label space's names: zero-shot accuracy
on the world's test set is well above chance and well below the accuracy of a head trained on labelled
pictures of the same features. That gap is what the paper's Classifier Tuning on synthetic data closes.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from synthrec.toyworld import captions
from synthrec.toyworld.training import NoProgress, Progress, lr_factor, set_lr
from synthrec.toyworld.world import IMAGE_SIZE, WORLD_CLASSES, draw_class

CONTEXT_LENGTH = 32


@dataclass(frozen=True)
class ClipRecipe:
    pictures: int = 6000
    steps: int = 450
    batch: int = 128
    lr: float = 4e-3
    weight_decay: float = 0.05
    initial_logit_scale: float = 30.0
    vision_width: int = 16
    small_rate: float = 0.3  # pictures seen at 32 px and upsampled, as pictures on the web come in all sizes


def model_config(recipe: ClipRecipe) -> dict[str, Any]:
    return {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": IMAGE_SIZE,
            "layers": [1, 1, 1, 1],
            "width": recipe.vision_width,
            "head_width": 16,
        },
        "text_cfg": {
            "context_length": CONTEXT_LENGTH,
            "vocab_size": 49408,
            "width": 32,
            "heads": 4,
            "layers": 2,
        },
    }


def preprocess_config() -> dict[str, Any]:
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    return {
        "size": IMAGE_SIZE,
        "mode": "RGB",
        "mean": list(OPENAI_DATASET_MEAN),
        "std": list(OPENAI_DATASET_STD),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
        "fill_color": 0,
    }


def normalise(images: list[Any]) -> Any:
    """A batch of 64 px PIL images as the model's preprocess makes them (resize and crop are no-ops)."""
    import numpy as np
    import torch
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    x = torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in images])).permute(0, 3, 1, 2)
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (x.float() / 255 - mean) / std


def blurred(image: Any) -> Any:
    """``image`` seen at 32 px and upsampled back (bicubic, as open_clip's preprocess upsamples)."""
    from PIL import Image

    small = image.resize((IMAGE_SIZE // 2, IMAGE_SIZE // 2), Image.Resampling.BOX)
    return small.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)


def build_clip(
    out: Path, seed: int, recipe: ClipRecipe | None = None, progress: Progress | None = None
) -> dict[str, Any]:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from open_clip.model import CLIP
    from open_clip.tokenizer import SimpleTokenizer
    from safetensors.torch import save_file

    recipe = recipe or ClipRecipe()
    progress = progress or NoProgress()
    rng = np.random.default_rng([seed, 201])
    pictures, texts = [], []
    for _ in range(recipe.pictures):
        name = WORLD_CLASSES[int(rng.integers(len(WORLD_CLASSES)))]
        picture = draw_class(rng, name)[0]
        if rng.random() < recipe.small_rate:
            picture = blurred(picture)
        pictures.append(picture)
        texts.append(captions.web_caption(rng, name))
    images = normalise(pictures)
    tokens = SimpleTokenizer(context_length=CONTEXT_LENGTH)(texts)

    cfg = model_config(recipe)
    torch.manual_seed(seed * 1000 + 202)
    model = CLIP(**cfg)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(recipe.initial_logit_scale))
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    gen = torch.Generator().manual_seed(seed * 1000 + 203)
    model.train()
    progress.start("CLIP", recipe.steps)
    first = last = 0.0
    for step in range(recipe.steps):
        set_lr(optimizer, recipe.lr * lr_factor(step, recipe.steps, 30, floor=0.0))
        rows = torch.randint(0, len(texts), (recipe.batch,), generator=gen)
        image_f, text_f, scale = model(images[rows], tokens[rows])
        logits = scale * image_f @ text_f.T
        # A caption can occur several times in a batch: every identical caption is a positive.
        same = (tokens[rows][:, None, :] == tokens[rows][None, :, :]).all(-1).float()
        target = same / same.sum(1, keepdim=True)
        loss = -0.5 * (
            (target * F.log_softmax(logits, 1)).sum(1).mean()
            + (target * F.log_softmax(logits.T, 1)).sum(1).mean()
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        last = loss.item()
        first = first or last
        progress.advance()
    model.eval()
    out.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "open_clip_model.safetensors")
    config = {"model_cfg": cfg, "preprocess_cfg": preprocess_config()}
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return {
        "parameters": {"clip": sum(p.numel() for p in model.parameters())},
        "losses": {"first": round(first, 4), "last": round(last, 4)},
        "logit_scale": round(float(model.logit_scale.detach().exp()), 2),
        "recipe": asdict(recipe),
    }
