"""Augmentations, torchvision transforms v2.

Per sample, in the DataLoader workers, on uint8 CHW tensors (a quarter of the bytes of float batches
cross the worker queues and the host-to-device copy):

- ``supervised_train``: RandomResizedCrop(scale 0.08-1) + horizontal flip, plus RandAugment (2 ops,
  magnitude 9) when the recipe has it (DeiT);
- ``moco_v2``: MoCo v2's "aug+" for each of the two views: RandomResizedCrop(scale 0.2-1), colour jitter
  (0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale p 0.2, Gaussian blur sigma U[0.1, 2] with p 0.5
  (``GaussianBlur``, separable), flip;
- ``evaluation``: resize to size/0.875 then centre crop (the standard ImageNet evaluation).

Per batch, on the device (``DeviceAugment``): scaling to [0, 1] and normalisation, random erasing per
image (DeiT: p 0.25, random pixel values) and one of mixup / cutmix per batch (DeiT: 0.8 / 1.0) with
label smoothing folded into the soft targets by the loss.
"""

from __future__ import annotations

from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _interpolation(name: str) -> Any:
    from torchvision.transforms import InterpolationMode

    return InterpolationMode.BICUBIC if name == "bicubic" else InterpolationMode.BILINEAR


def supervised_train(size: int, *, randaugment: bool, interpolation: str = "bilinear") -> Any:
    from torchvision.transforms import v2

    ops: list[Any] = [
        v2.RandomResizedCrop(
            size, scale=(0.08, 1.0), interpolation=_interpolation(interpolation), antialias=True
        ),
        v2.RandomHorizontalFlip(),
    ]
    if randaugment:
        ops.append(v2.RandAugment(num_ops=2, magnitude=9, interpolation=_interpolation(interpolation)))
    return v2.Compose(ops)


class GaussianBlur:
    """MoCo v2's blur: sigma ~ U[0.1, 2.0] per image, truncated at 3 sigma, applied as two 1-D passes.

    torchvision's v2.GaussianBlur convolves with a square kernel of fixed size (23 for 224 px, 60 ms per
    image on one CPU core, which made the loader 200x slower than decoding); the official code blurs with
    PIL (no kernel size). The Gaussian is the same; this costs a few hundred microseconds."""

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        self.sigma = sigma

    def __call__(self, image: Any) -> Any:
        import math

        import torch
        import torch.nn.functional as F

        lo, hi = self.sigma
        sigma = lo + (hi - lo) * float(torch.rand(()))
        radius = max(1, math.ceil(3 * sigma))
        x = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-0.5 * (x / sigma) ** 2)
        kernel /= kernel.sum()
        c = image.shape[-3]
        out = image.float().unsqueeze(0)
        out = F.conv2d(
            F.pad(out, (radius, radius, 0, 0), mode="reflect"),
            kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1),
            groups=c,
        )
        out = F.conv2d(
            F.pad(out, (0, 0, radius, radius), mode="reflect"),
            kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1),
            groups=c,
        )
        out = out.squeeze(0)
        return out.round_().clamp_(0, 255).to(image.dtype) if image.dtype == torch.uint8 else out


def moco_v2(size: int) -> Any:
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.RandomApply([GaussianBlur((0.1, 2.0))], p=0.5),
            v2.RandomHorizontalFlip(),
        ]
    )


def evaluation(size: int, *, interpolation: str = "bilinear") -> Any:
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.Resize(round(size / 0.875), interpolation=_interpolation(interpolation), antialias=True),
            v2.CenterCrop(size),
        ]
    )


class DeviceAugment:
    """Normalisation, random erasing and mixup/cutmix of a uint8 batch already on the device."""

    def __init__(
        self,
        *,
        num_classes: int | None,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        random_erasing: float = 0.0,
        mixup: float = 0.0,
        cutmix: float = 0.0,
    ) -> None:
        from torchvision.transforms import v2

        self.mean, self.std = mean, std
        self.erase = v2.RandomErasing(p=random_erasing, value="random") if random_erasing > 0 else None
        mixers = []
        if num_classes is not None and mixup > 0:
            mixers.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
        if num_classes is not None and cutmix > 0:
            mixers.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
        self.mix = v2.RandomChoice(mixers) if len(mixers) > 1 else (mixers[0] if mixers else None)

    def normalise(self, images: Any) -> Any:
        import torch

        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1)
        return (images.float().div_(255.0) - mean) / std

    def __call__(self, images: Any, labels: Any = None) -> tuple[Any, Any]:
        import torch

        x = self.normalise(images)
        if self.erase is not None:  # v2 transforms treat a batch as one image: erase per image
            x = torch.stack([self.erase(img) for img in x])
        if self.mix is not None and labels is not None:
            x, labels = self.mix(x, labels)
        return x, labels
