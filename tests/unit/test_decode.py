"""Decoding images for CLIP: uint8 batches normalised on the device give exactly the model's own
preprocessing; reduced-size decoding (PIL draft) and batched tensor decoding (the gpu mode's path, run here
on the CPU) stay close to it; /dev/shm bounds how many batches loader workers keep ready."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from synthrec.workers import decode
from synthrec.workers.clip import load_clip
from synthrec.workers.decode import ImageDataset, decode_batch, decode_image, image_loader, resolve_decode


def photo(side: int, seed: int = 0, fmt: str = "JPEG") -> bytes:
    """A smooth picture (decodes like a photo, not like flat colour)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(max(2, side // 16), max(2, side // 16), 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((side, side), Image.BICUBIC).filter(ImageFilter.GaussianBlur(2))
    ImageDraw.Draw(img).ellipse((side // 4, side // 4, side // 2, side // 2), fill=(250, 30, 30))
    out = io.BytesIO()
    img.save(out, fmt, quality=92) if fmt == "JPEG" else img.save(out, fmt)
    return out.getvalue()


@pytest.fixture(scope="module")
def clip(tiny_models):
    return load_clip(tiny_models.clip.as_uri(), None, "cpu")


def test_uint8_pixels_normalised_later_are_the_models_preprocessing_exactly(clip) -> None:
    for side in (48, 100, 300):
        image = Image.open(io.BytesIO(photo(side))).convert("RGB")
        expected = clip.preprocess(image)
        pixels = decode_image(photo(side), clip.pixels, "full")
        assert pixels.dtype == torch.uint8 and tuple(pixels.shape) == clip.image_shape()
        assert torch.equal(clip.normalize(pixels[None])[0], expected)


def test_reduced_decoding_is_full_decoding_below_twice_the_input_and_drafts_above(
    clip, monkeypatch: pytest.MonkeyPatch
) -> None:
    side = clip.pixels.side  # 64 for the tiny model
    small = photo(2 * side - 8)
    assert torch.equal(decode_image(small, clip.pixels, "reduced"), decode_image(small, clip.pixels, "full"))

    from PIL import JpegImagePlugin

    drafted: list[tuple[int, int]] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self: Image.Image, mode: str | None, size: tuple[int, int] | None) -> object:
        result = original(self, mode, size)
        drafted.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    large = photo(8 * side)
    reduced = decode_image(large, clip.pixels, "reduced").float()
    assert drafted == [(side, side)]  # decoded at 1/8 scale: exactly the input size, not 8x it
    full = decode_image(large, clip.pixels, "full").float()
    assert (reduced - full).abs().mean() < 6  # of 255: the DCT scale instead of a bicubic downscale
    monkeypatch.undo()
    png = photo(8 * side, fmt="PNG")  # no DCT scales: decoded fully
    assert torch.equal(decode_image(png, clip.pixels, "reduced"), decode_image(png, clip.pixels, "full"))


def test_batched_tensor_decoding_matches_the_cpu_path_and_keeps_the_bad_ones_out(clip) -> None:
    good = [photo(160, seed=s) for s in range(3)]
    raw_bytes = [*good, photo(96, seed=9, fmt="PNG"), good[0][: len(good[0]) // 3], photo(200, seed=4)]
    dataset = ImageDataset(list(range(len(raw_bytes))), raw_bytes.__getitem__, clip.pixels, "gpu")
    raw, index, ok = decode.collate_raw([dataset[i] for i in range(len(dataset))])
    images, ok = decode_batch(raw, ok, clip.pixels, "cpu")  # the gpu mode's code, on the CPU
    assert images.dtype == torch.uint8 and tuple(images.shape) == (6, *clip.image_shape())
    assert ok.tolist() == [True, True, True, True, False, True]  # the truncated JPEG only
    for i in (0, 1, 2, 3, 5):
        cpu = decode_image(raw_bytes[i], clip.pixels, "full").float()
        assert (images[i].float() - cpu).abs().mean() < 3, i  # another IDCT and resize: a pixel level apart
    assert index.tolist() == list(range(6))


def test_decode_modes_resolve_by_device() -> None:
    assert resolve_decode(None, "cpu") == "reduced"
    assert resolve_decode("full", "cpu") == "full"
    assert resolve_decode("gpu", "cpu") == "reduced"  # no JPEG decoder there: said in the log


def test_loader_workers_keep_only_as_many_batches_as_dev_shm_holds(
    clip, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    dataset = ImageDataset([0] * 64, lambda _: photo(64), clip.pixels, "full")
    batch_bytes = 16 * 3 * 64 * 64
    monkeypatch.setattr(decode, "shm_available", lambda path="/dev/shm": 2 * 2 * batch_bytes)
    loader = image_loader(dataset, batch_size=16, workers=3)
    assert (loader.num_workers, loader.prefetch_factor) == (2, 1)  # half of it: 2 workers x 1 batch
    monkeypatch.setattr(decode, "shm_available", lambda path="/dev/shm": batch_bytes)
    assert image_loader(dataset, batch_size=16, workers=3).num_workers == 0  # no room: in-process
    monkeypatch.setattr(decode, "shm_available", lambda path="/dev/shm": 1 << 40)
    assert (image_loader(dataset, batch_size=16, workers=3).prefetch_factor) == 4
