"""The standard pre-training recipes as defaults, and the learning-rate schedule (pure Python).

- ``moco-v2`` (facebookresearch/moco ``main_moco.py`` with ``--mlp --moco-t 0.2 --aug-plus --cos``):
  SGD lr 0.03 x batch/256, momentum 0.9, wd 1e-4 on every parameter, 200 epochs, cosine set once per
  epoch, no warmup.
- ``supervised``, by backbone family:
  - ``deit`` (transformers: ViT, DeiT, ...; facebookresearch/deit ``main.py``): AdamW lr 5e-4 x
    batch/512, wd 0.05 (not on biases and norms), 300 epochs, cosine per epoch to 1e-5 after 5 warmup
    epochs from 1e-6; RandAugment (torchvision's m9, 2 ops, for timm's rand-m9-mstd0.5-inc1), mixup 0.8,
    cutmix 1.0 (one of the two per batch), label smoothing 0.1, random erasing 0.25, drop path 0.1,
    bicubic resizing, repeated augmentation x3 (``RASampler``: each image of an epoch three times, each
    copy augmented apart, in the same step, and an epoch as many steps as without it, so it reads a third
    of the images; here the copies share a rank's batch, which for a network without batch norm gives the
    same gradient as DeiT's copies on three ranks). Left out: model EMA (main.py keeps it beside the model
    but evaluates and reports the model itself).
  - ``resnet`` (every other backbone; pytorch/examples ``imagenet/main.py``): SGD lr 0.1 x batch/256,
    momentum 0.9, wd 1e-4, 90 epochs, with the common cosine variant per epoch and 5 warmup epochs
    (Goyal et al., for batches beyond 256); RandomResizedCrop + flip, bilinear.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

Family = Literal["resnet", "deit", "moco"]


@dataclass(frozen=True)
class Recipe:
    family: Family
    optimizer: Literal["sgd", "adamw"]
    base_lr: float
    base_batch: int
    lr: float  # base_lr x batch / base_batch, or the user's
    momentum: float
    weight_decay: float
    decay_norm_and_bias: bool
    epochs: int
    warmup_epochs: float
    warmup_lr: float
    min_lr: float
    schedule_per: Literal["epoch", "step"]
    betas: tuple[float, float] = (0.9, 0.999)
    label_smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    randaugment: bool = False
    random_erasing: float = 0.0
    drop_path: float = 0.0
    repeated_augmentation: int = 1  # copies of each image per epoch, each augmented apart
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_DEFAULTS: dict[Family, dict[str, Any]] = {
    "moco": dict(
        optimizer="sgd",
        base_lr=0.03,
        base_batch=256,
        momentum=0.9,
        weight_decay=1e-4,
        decay_norm_and_bias=True,
        epochs=200,
        warmup_epochs=0.0,
        warmup_lr=0.0,
        min_lr=0.0,
        schedule_per="epoch",
    ),
    "resnet": dict(
        optimizer="sgd",
        base_lr=0.1,
        base_batch=256,
        momentum=0.9,
        weight_decay=1e-4,
        decay_norm_and_bias=True,
        epochs=90,
        warmup_epochs=5.0,
        warmup_lr=0.0,
        min_lr=0.0,
        schedule_per="epoch",
    ),
    "deit": dict(
        optimizer="adamw",
        base_lr=5e-4,
        base_batch=512,
        momentum=0.9,
        weight_decay=0.05,
        decay_norm_and_bias=False,
        epochs=300,
        warmup_epochs=5.0,
        warmup_lr=1e-6,
        min_lr=1e-5,
        schedule_per="epoch",
        label_smoothing=0.1,
        mixup=0.8,
        cutmix=1.0,
        randaugment=True,
        random_erasing=0.25,
        drop_path=0.1,
        repeated_augmentation=3,
        interpolation="bicubic",
    ),
}


def backbone_family(is_transformer: bool) -> Literal["resnet", "deit"]:
    return "deit" if is_transformer else "resnet"


def resolve_recipe(
    objective: str,
    is_transformer: bool,
    batch_size: int,
    *,
    epochs: int | None = None,
    optimizer: Any = None,
    supervised: Any = None,
) -> Recipe:
    """The recipe for ``objective`` and the backbone's family, with the task's overrides applied.
    ``optimizer``/``supervised`` are the task's OptimizerSettings / SupervisedSettings (None fields keep
    the recipe's value)."""
    family: Family = "moco" if objective == "moco-v2" else backbone_family(is_transformer)
    values = dict(_DEFAULTS[family])
    if optimizer is not None:
        for name, key in (
            ("name", "optimizer"),
            ("momentum", "momentum"),
            ("weight_decay", "weight_decay"),
            ("warmup_epochs", "warmup_epochs"),
            ("min_lr", "min_lr"),
            ("schedule_per", "schedule_per"),
        ):
            value = getattr(optimizer, name)
            if value is not None:
                values[key] = value
    if supervised is not None and family != "moco":
        for name in (
            "label_smoothing",
            "mixup",
            "cutmix",
            "randaugment",
            "random_erasing",
            "drop_path",
            "repeated_augmentation",
        ):
            value = getattr(supervised, name)
            if value is not None:
                values[name] = value
    if epochs is not None:
        values["epochs"] = epochs
    user_lr = getattr(optimizer, "lr", None) if optimizer is not None else None
    lr = user_lr if user_lr is not None else values["base_lr"] * batch_size / values["base_batch"]
    return Recipe(family=family, lr=lr, **values)


def lr_at(recipe: Recipe, epoch: int, step_in_epoch: int, steps_per_epoch: int) -> float:
    """The learning rate of a step: cosine from ``lr`` to ``min_lr`` over all epochs, with the first
    ``warmup_epochs`` replaced by a linear ramp from ``warmup_lr`` (timm's CosineLRScheduler without
    warmup prefix, which DeiT uses; main_moco.py's ``--cos`` is the same without warmup). With
    ``schedule_per='epoch'`` the cosine moves once per epoch, as those codebases step it; the warmup
    ramps per step (Goyal et al.), so a first epoch never trains at the ramp's starting value."""
    exact = epoch + step_in_epoch / max(1, steps_per_epoch)
    if exact < recipe.warmup_epochs:
        return recipe.warmup_lr + (recipe.lr - recipe.warmup_lr) * exact / recipe.warmup_epochs
    t = float(epoch) if recipe.schedule_per == "epoch" else exact
    progress = min(1.0, t / recipe.epochs)
    return recipe.min_lr + (recipe.lr - recipe.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
