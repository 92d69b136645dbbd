"""Augmentations of pre-training (synthrec.workers.pretrain.augment)."""

from __future__ import annotations

import math

import torch
import torchvision.transforms.v2.functional as TF

from synthrec.workers.pretrain import augment


def test_the_moco_blur_is_torchvisions_gaussian_truncated_at_three_sigma() -> None:
    image = torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8)
    blur = augment.GaussianBlur((0.1, 2.0))
    torch.manual_seed(7)
    sigma = 0.1 + 1.9 * float(torch.rand(()))
    torch.manual_seed(7)
    mine = blur(image.float())
    size = 2 * max(1, math.ceil(3 * sigma)) + 1
    expected = TF.gaussian_blur(image.float(), kernel_size=[size, size], sigma=[sigma, sigma])
    assert torch.allclose(mine, expected, atol=1e-3)
    out = blur(image)
    assert out.dtype == torch.uint8 and out.shape == image.shape


def test_the_views_are_uint8_crops_and_the_device_side_normalises() -> None:
    image = torch.randint(0, 256, (3, 50, 60), dtype=torch.uint8)
    for transform in (
        augment.moco_v2(32),
        augment.supervised_train(32, randaugment=True),
        augment.evaluation(32),
    ):
        view = transform(image)
        assert view.shape == (3, 32, 32) and view.dtype == torch.uint8
    device = augment.DeviceAugment(num_classes=4, mixup=0.8, cutmix=1.0, random_erasing=1.0)
    _x, y = device(torch.full((2, 3, 8, 8), 255, dtype=torch.uint8), torch.tensor([0, 3]))
    assert y.shape == (2, 4) and torch.allclose(y.sum(1), torch.ones(2))  # soft targets from mixup/cutmix
    plain = augment.DeviceAugment(num_classes=None).normalise(
        torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    )
    assert torch.allclose(
        plain[0, :, 0, 0],
        torch.tensor(
            [(1 - m) / s for m, s in zip(augment.IMAGENET_MEAN, augment.IMAGENET_STD, strict=False)]
        ),
    )
