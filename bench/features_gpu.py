"""CLIP image features on an accelerator: images/s end to end (JPEG decode + preprocess in DataLoader
workers, host-to-device copy, AMP forward) vs. the image encoder alone, and decode alone.

The filter stage and the train stage's feature cache run exactly this path (synthrec.workers.clip:
ImageDataset over a WebDataset tar, encode_dataset). The model has RANDOM weights (no download), which
costs the same FLOPs as the trained one.

    python bench/features_gpu.py                       # GPU: ViT-B-16, 4096 JPEGs of 256 px, batch 256
    python bench/features_gpu.py --images 8192 --batch-size 512 --workers 15
    python bench/features_gpu.py --smoke               # CPU check of the code path: 8 images, batch 4

Prints one line of JSON. Anchors (performance-anchors.md §3): ViT-B/16 ≈5.5k img/s (A100) / ≈14k (H100)
for the encoder at large batch; CPU decode + resize of a 512² JPEG ≈400 img/s per core with Pillow, so
end to end is decode-bound unless there are ≈35 cores per H100.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name


def write_jpeg_tar(path: Path, images: int, size: int, seed: int = 0, classes: int = 4) -> None:
    """A WebDataset shard like the generate stage writes: <key>.jpg (q95, smooth noise + shapes, so it
    decodes like a photo rather than like flat colour) and <key>.json with a class index."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(images):
            base = rng.integers(0, 256, size=(size // 8, size // 8, 3), dtype=np.uint8)
            img = (
                Image.fromarray(base).resize((size, size), Image.BICUBIC).filter(ImageFilter.GaussianBlur(2))
            )
            draw = ImageDraw.Draw(img)
            x, y = (int(v) for v in rng.integers(0, size // 2, 2))
            draw.ellipse(
                (x, y, x + size // 3, y + size // 3), fill=tuple(int(v) for v in rng.integers(0, 256, 3))
            )
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=95)
            key = f"c{i % classes:05d}-p00000-i{i:05d}"
            for ext, data in (("jpg", buf.getvalue()), ("json", json.dumps({"class": i % classes}).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def shard_dataset(clip: Any, tar: Path, classes: int = 4) -> Any:
    from synthrec.workers.clip import ImageDataset
    from synthrec.workers.shards import read_range, scan_shard

    samples = scan_shard(tar, classes).samples
    items = [(str(tar), s.offset, s.size) for s in samples]
    return ImageDataset(items, read_range, clip.preprocess, clip.image_shape())


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(
    model: str,
    pretrained: str | None,
    images: int,
    size: int,
    batch: int,
    workers: int | None,
    device: str,
    encoder_iters: int,
) -> dict[str, Any]:
    import torch

    from synthrec.workers.clip import available_cpus, encode_dataset, image_loader, load_clip, loader_workers

    torch.backends.cudnn.benchmark = True
    clip = load_clip(model, pretrained, device)
    with tempfile.TemporaryDirectory() as tmp:
        tar = Path(tmp) / "shard.tar"
        t = time.perf_counter()
        write_jpeg_tar(tar, images, size)
        write_s = time.perf_counter() - t
        dataset = shard_dataset(clip, tar)
        n_workers = loader_workers(len(dataset)) if workers is None else workers

        # decode + preprocess alone (the CPU side)
        t = time.perf_counter()
        for _ in image_loader(dataset, batch_size=batch, device=device, workers=n_workers):
            pass
        decode_s = time.perf_counter() - t

        # end to end: decode in workers, copy, forward (one warm-up batch first)
        warm = torch.utils.data.Subset(dataset, range(min(batch, len(dataset))))
        clip.encode(torch.stack([warm[i][0] for i in range(len(warm))]))
        _sync(device)
        t = time.perf_counter()
        feats, ok = encode_dataset(clip, dataset, batch, workers=n_workers)
        _sync(device)
        e2e_s = time.perf_counter() - t

    # the encoder alone on a resident batch (AMP on CUDA)
    x = torch.randn((batch, *clip.image_shape()), device=device)
    clip.encode(x)
    _sync(device)
    t = time.perf_counter()
    for _ in range(encoder_iters):
        clip.encode(x)
    _sync(device)
    enc_s = time.perf_counter() - t
    e2e = images / e2e_s
    enc = batch * encoder_iters / enc_s
    return {
        "model": model,
        "random_weights": pretrained is None,
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") else cpu_name(),
        "torch": torch.__version__,
        "cpus": available_cpus(),
        "loader_workers": n_workers,
        "images": images,
        "jpeg_px": size,
        "batch_size": batch,
        "features": list(feats.shape),
        "all_decoded": bool(ok.all()),
        "decode_images_per_s": round(images / decode_s, 1),
        "end_to_end_images_per_s": round(e2e, 1),
        "encoder_images_per_s": round(enc, 1),
        "end_to_end_over_encoder": round(e2e / enc, 3),
        "seconds": {
            "write_jpegs": round(write_s, 2),
            "decode": round(decode_s, 2),
            "end_to_end": round(e2e_s, 2),
            "encoder": round(enc_s, 2),
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="CPU, 8 images, batch 4: checks the code path only")
    p.add_argument("--model", default="ViT-B-16", help="open_clip architecture or model folder reference")
    p.add_argument("--pretrained", default=None, help="open_clip pretrained tag (default: random weights)")
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--size", type=int, default=256, help="JPEG side in pixels (the paper's images: 256)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: CPUs - 1)")
    p.add_argument("--encoder-iters", type=int, default=20)
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    if args.smoke:
        args.images, args.batch_size, args.encoder_iters = 8, 4, 1
        args.device = args.device or "cpu"
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and not args.smoke:
        print("no GPU: run with --smoke for a CPU check of the code path", file=sys.stderr)
    result = measure(
        args.model,
        args.pretrained,
        args.images,
        args.size,
        args.batch_size,
        args.workers,
        device,
        args.encoder_iters,
    )
    result["smoke"] = args.smoke
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
