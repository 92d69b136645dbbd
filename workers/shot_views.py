"""Augmented views of a run's real shots through the frozen image encoder, for Figure 1's baselines.

Tip-Adapter builds its cache keys from ``augment_epoch`` (10) augmented passes over the shots (random
resized crop of scale 0.5-1, horizontal flip) and Tip-Adapter-F and CoOp train on a fresh augmented view
of every shot each epoch (CoOp: scale 0.08-1), as their official code does. With the image encoder frozen,
a view is just a tensor of features: :class:`ShotViews` encodes view ``k`` of every shot on demand,
deterministically from the run's seed and ``k`` (torch's RNG is forked, so nothing else is disturbed).

The crop covers the model's own input size, with bicubic interpolation and the model's normalisation
(taken from its validation transform), as the official code uses CLIP's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

TIP_ADAPTER_SCALE = (0.5, 1.0)  # Tip-Adapter's RandomResizedCrop
COOP_SCALE = (0.08, 1.0)  # Dassl's random_resized_crop (torchvision's default scale)


def augmentation(preprocess: Any, scale: tuple[float, float]) -> Any:
    """Random resized crop (bicubic) + horizontal flip + the model's normalisation, at the model's input
    size, which are read from its validation transform (``Resize``/``CenterCrop`` ... ``Normalize``)."""
    from torchvision import transforms as T

    steps = list(getattr(preprocess, "transforms", []))
    normalize = next((t for t in steps if isinstance(t, T.Normalize)), None)
    crop = next((t for t in steps if isinstance(t, T.CenterCrop)), None)
    if normalize is None or crop is None:
        raise ValueError(f"cannot derive an augmentation from the model's transform {preprocess!r}")
    size = crop.size if isinstance(crop.size, int) else tuple(crop.size)
    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=scale, interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(p=0.5),
            T.ToTensor(),
            T.Normalize(normalize.mean, normalize.std),
        ]
    )


def load_images(items: list[Any], reader: Any) -> list[Any]:
    """The shots' decoded RGB images (``reader(item)`` gives the bytes, as for the feature cache)."""
    from synthrec.workers.realdata import decode_rgb

    return [decode_rgb(reader(item)) for item in items]


class ShotViews:
    """View ``k`` of every shot: its features [N, D] (float32) under the k-th seeded augmentation."""

    def __init__(
        self, clip: Any, images: list[Any], scale: tuple[float, float], seed: int, batch_size: int = 256
    ) -> None:
        self.clip = clip
        self.images = images
        self.transform = augmentation(clip.preprocess, scale)
        self.seed = seed
        self.batch_size = batch_size

    def __len__(self) -> int:
        return len(self.images)

    def encode(self, view: int, *, normalize: bool = True) -> torch.Tensor:
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_view_seed(self.seed, view))
            pixels = torch.stack([self.transform(image) for image in self.images])
        chunks = [
            self.clip.encode(pixels[i : i + self.batch_size], normalize=normalize)
            for i in range(0, len(pixels), self.batch_size)
        ]
        return torch.cat(chunks).float()


def _view_seed(seed: int, view: int) -> int:
    """Distinct, stable seeds per (run seed, view) (no Python hash(): it varies between processes)."""
    return (seed * 1_000_003 + view * 7_919 + 12_345) % (2**63 - 1)
