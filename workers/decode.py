"""Images for an open_clip model: decoded, resized and cropped to uint8 batches; the arithmetic of the
model's preprocessing (to float, mean and std) runs on the accelerator (``Pixels.normalize``), so loader
workers pass a quarter of the bytes through /dev/shm and the CPU does no float work.

How images are decoded (``filter.decode``; synthrec.plan.shm sizes /dev/shm for it):

- ``full``: every pixel decoded on the CPU (PIL), then the model's own resize and crop (PIL): the official
  code's preprocessing, bit for bit (ToTensor then Normalize is /255 then (x - mean) / std, done later);
- ``reduced``: the same, but a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) whose result still
  covers the model's input on both sides (PIL ``draft``): identical below twice the input size, 3-5x less
  CPU for 512 px and larger images (performance-anchors.md §3.2);
- ``gpu``: loader workers only read the bytes; JPEGs are decoded in batches on the accelerator
  (``torchvision.io.decode_jpeg(device=...)``, nvJPEG on CUDA) and resized and cropped there with the same
  transforms; any other format, or a JPEG it cannot decode, goes through the CPU path.

Readers run in DataLoader workers, so ``read`` must be a module-level function or a picklable object.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DecodeMode = str  # full | reduced | gpu
_JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass
class Pixels:
    """A model's preprocessing split in two: ``geometric`` (PIL image -> uint8 [3, S, S]: the model's own
    resize, crop and mode transforms) and the normalisation (``normalize``, on the device)."""

    geometric: Callable[[Any], Any]
    tensor_ops: list[Any]  # the resize and crop transforms, for uint8 tensors (the gpu mode)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    shape: tuple[int, ...]
    _device_stats: dict[str, tuple[Any, Any]] | None = None

    @property
    def side(self) -> int:
        return int(self.shape[-1])

    def normalize(self, images: torch.Tensor, device: str) -> torch.Tensor:
        """uint8 [B, 3, S, S] -> float32 ``(x / 255 - mean) / std`` on ``device`` (what ToTensor and
        Normalize compute on the CPU, in the same float32 operations)."""
        import torch

        if self._device_stats is None:
            self._device_stats = {}
        if device not in self._device_stats:
            mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
            self._device_stats[device] = (mean, std)
        mean, std = self._device_stats[device]
        x = images.to(device, non_blocking=True).float().div_(255)
        return x.sub_(mean).div_(std)

    def __getstate__(self) -> dict[str, Any]:  # loader workers get the transforms, not device tensors
        return {**self.__dict__, "_device_stats": None}


def split_preprocess(preprocess: Any) -> Pixels:
    """``Pixels`` of an open_clip preprocessing Compose (resize, crop, mode, to-tensor, normalize)."""
    from PIL import Image
    from torchvision import transforms as T

    steps = list(getattr(preprocess, "transforms", [preprocess]))
    normalize = next((t for t in steps if isinstance(t, T.Normalize)), None)
    if normalize is None or not any(isinstance(t, T.ToTensor) for t in steps):
        raise ValueError(f"not an image preprocessing with ToTensor and Normalize: {preprocess!r}")
    kept = [t for t in steps if not isinstance(t, T.ToTensor | T.Normalize)]
    geometric = T.Compose([*kept, T.PILToTensor()])
    tensor_ops = [t for t in kept if type(t).__name__ != "MaybeConvertMode"]
    shape = tuple(geometric(Image.new("RGB", (8, 8))).shape)
    return Pixels(geometric, tensor_ops, tuple(normalize.mean), tuple(normalize.std), shape)


def resolve_decode(requested: str | None, device: str) -> str:
    """The decode mode to run: ``gpu`` only where the device decodes JPEGs (default on CUDA), else
    ``reduced`` (the default elsewhere); ``full`` as asked."""
    if requested == "full":
        return "full"
    if requested in (None, "gpu") and device.startswith("cuda") and _device_decodes(device):
        return "gpu"
    if requested == "gpu":
        log.warning("filter.decode gpu: %s cannot decode JPEGs; decoding at reduced size on the CPU", device)
    return "reduced"


def _device_decodes(device: str) -> bool:
    import io

    import torch
    from PIL import Image
    from torchvision.io import decode_jpeg

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(buf, "JPEG")
    try:
        decode_jpeg([torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)], device=device)
    except (RuntimeError, ValueError) as exc:
        log.info("no JPEG decoding on %s: %s", device, exc)
        return False
    return True


def decode_image(data: bytes, pixels: Pixels, mode: str) -> Any:
    """uint8 [3, S, S] of encoded image bytes on the CPU (``full`` or ``reduced``); raises on bad data."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        if mode == "reduced" and img.format == "JPEG":
            img.draft("RGB", (pixels.side, pixels.side))  # a DCT scale covering the input on both sides
        img.load()  # decode fully: truncation shows up here, not later
        return pixels.geometric(img.convert("RGB"))


class ImageDataset:
    """Map-style dataset: item i -> (image, i, ok). ``read(item)`` returns the encoded bytes. In the CPU
    modes the image is uint8 [3, S, S] (undecodable bytes: zeros and ok False); in the gpu mode it is the
    raw bytes (1-D uint8), decoded later in batches (``decode_batch``)."""

    def __init__(
        self, items: Sequence[Any], read: Callable[[Any], bytes], pixels: Pixels, mode: str = "full"
    ):
        self.items = list(items)
        self.read = read
        self.pixels = pixels
        self.mode = mode

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Any, int, bool]:
        import torch
        from PIL import Image

        try:
            data = self.read(self.items[i])
            if self.mode == "gpu":
                return torch.frombuffer(bytearray(data), dtype=torch.uint8), i, True
            return decode_image(data, self.pixels, self.mode), i, True
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            log.warning("cannot decode image %s: %s", self.items[i], e)
            if self.mode == "gpu":
                return torch.zeros(0, dtype=torch.uint8), i, False
            return torch.zeros(self.pixels.shape, dtype=torch.uint8), i, False


def collate_raw(batch: list[tuple[Any, int, bool]]) -> tuple[list[Any], Any, Any]:
    """The gpu mode's batches: the encoded images as a list (their lengths differ)."""
    import torch

    return (
        [b[0] for b in batch],
        torch.tensor([b[1] for b in batch], dtype=torch.int64),
        torch.tensor([b[2] for b in batch], dtype=torch.bool),
    )


def decode_batch(raw: list[Any], ok: Any, pixels: Pixels, device: str) -> tuple[Any, Any]:
    """The gpu mode: uint8 [B, 3, S, S] on ``device`` and the updated ok mask. JPEGs are decoded together
    on the device and resized per shape group there; the rest (and failures) image by image on the CPU."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    out = torch.zeros((len(raw), *pixels.shape), dtype=torch.uint8, device=device)
    ok = ok.clone()
    jpegs = [i for i, r in enumerate(raw) if bool(ok[i]) and bytes(r[:3].tolist()) == _JPEG_MAGIC]
    decoded: dict[int, Any] = {}
    if jpegs:
        try:
            images = decode_jpeg([raw[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)
            decoded = dict(zip(jpegs, images, strict=True))
        except RuntimeError:  # one bad image fails the batch call: find it
            for i in jpegs:
                with contextlib.suppress(RuntimeError):
                    decoded[i] = decode_jpeg(raw[i], mode=ImageReadMode.RGB, device=device)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in decoded.items():
        groups.setdefault(tuple(image.shape), []).append(i)
    for members in groups.values():
        stacked = torch.stack([decoded[i] for i in members])
        for op in pixels.tensor_ops:
            stacked = op(stacked)
        out[torch.tensor(members, device=device)] = stacked
    for i in range(len(raw)):
        if i in decoded or not bool(ok[i]):
            continue
        try:
            out[i] = decode_image(bytes(raw[i].numpy()), pixels, "reduced").to(device)
        except (OSError, SyntaxError, ValueError) as e:
            log.warning("cannot decode an image of the batch: %s", e)
            ok[i] = False
    return out, ok


# ------------------------------------------------------------------------------------------- loaders


def shm_available(path: str = "/dev/shm") -> int:
    """Free bytes of /dev/shm (a pod's volume, or the host's); very large where there is none."""
    try:
        st = os.statvfs(path)
    except OSError:
        return 1 << 40
    return st.f_bavail * st.f_frsize


def image_loader(
    dataset: ImageDataset,
    *,
    batch_size: int | None = None,
    batch_sampler: Any = None,
    device: str = "cpu",
    workers: int | None = None,
) -> Any:
    """A DataLoader over ``dataset`` in order (``batch_size``), or following ``batch_sampler`` (lists of
    indices, e.g. a training plan); decoding runs in ``workers`` processes (default: loader_workers),
    keeping as many batches ready as /dev/shm holds (synthrec.plan.shm.fit_prefetch)."""
    import torch

    from synthrec.plan.shm import PREFETCH, fit_prefetch
    from synthrec.workers.clip import loader_workers

    workers = loader_workers(len(dataset)) if workers is None else workers
    batch = batch_size or max((len(b) for b in (batch_sampler or [])), default=1)
    prefetch = PREFETCH
    if workers:
        workers, prefetch = fit_prefetch(batch, workers, dataset.pixels.side, shm_available())
        if not workers:
            log.warning("/dev/shm has no room for batches of %d images; decoding in the main process", batch)
    kwargs: dict[str, Any] = {
        "num_workers": workers,
        "pin_memory": device.startswith("cuda"),
        "prefetch_factor": prefetch if workers else None,
    }
    if dataset.mode == "gpu":
        kwargs["collate_fn"] = collate_raw
        kwargs["pin_memory"] = False
    if batch_sampler is not None:
        return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, **kwargs)


def device_batches(loader: Any, dataset: ImageDataset, device: str) -> Any:
    """(uint8 images, indices, ok) per batch of ``loader``; in the gpu mode decoded on ``device``."""
    for images, index, good in loader:
        if dataset.mode == "gpu":
            images, good = decode_batch(images, good, dataset.pixels, device)
        yield images, index, good
