"""CLIP image features on an accelerator: images/s end to end (JPEG decode + preprocess in DataLoader
workers, host-to-device copy, AMP forward) vs. the image encoder alone, and decode alone.

The filter stage and the train stage's feature cache run exactly this path (synthrec.workers.clip:
ImageDataset over a WebDataset tar, encode_dataset). The model has RANDOM weights (no download), which
costs the same FLOPs as the trained one.

    python bench/features_gpu.py                       # GPU: ViT-B-16, 4096 JPEGs of 256 px, batch 256
    python bench/features_gpu.py --images 8192 --batch-size 512 --workers 15
    python bench/features_gpu.py --smoke               # tiny CLIP, 8 images, batch 4: checks the code path

Both sides run in one process under the same thread setting: one warm-up round, then ``--rounds``
rounds in alternating order; the headline is the median of the per-round ratios (end to end / encoder
only, images/s) with its spread (bench/rounds.py). The encoder-only side feeds uint8 batches already on
the device, normalised there, as the filter's batches are. It answers how much of the encoder's rate the
filter stage keeps with its decode path (``--decode``: the filter.decode modes); not how fast a trained
model is, nor the shard download (the tar is local).

Prints the headline, then one line of JSON.

Anchors (performance-anchors.md §3): ViT-B/16 ≈5.5k img/s (A100) / ≈14k (H100)
for the encoder at large batch; CPU decode + resize of a 512² JPEG ≈400 img/s per core with Pillow, so
end to end is decode-bound unless there are ≈35 cores per H100.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
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


def shard_dataset(clip: Any, tar: Path, classes: int = 4, decode: str = "full") -> Any:
    """The shard's images as the filter stage reads them (``filter.decode`` mode ``decode``)."""
    from synthrec.workers.shards import read_range, scan_shard

    samples = scan_shard(tar, classes).samples
    return clip.dataset([(str(tar), s.offset, s.size) for s in samples], read_range, decode)


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
    rounds: int,
    decode: str | None = None,
) -> dict[str, Any]:
    import torch
    from rounds import paired_rounds

    from synthrec.workers.clip import available_cpus, encode_dataset, image_loader, load_clip, loader_workers
    from synthrec.workers.decode import resolve_decode

    torch.backends.cudnn.benchmark = True
    clip = load_clip(model, pretrained, device)
    mode = resolve_decode(decode, device)
    # the encoder alone: the same number of images as uint8 batches already on the device (normalised
    # there, as encode_dataset's batches are)
    resident = torch.randint(0, 256, (batch, *clip.image_shape()), dtype=torch.uint8, device=device)
    with tempfile.TemporaryDirectory() as tmp:
        tar = Path(tmp) / "shard.tar"
        write_jpeg_tar(tar, images, size)
        dataset = shard_dataset(clip, tar, decode=mode)
        n_workers = loader_workers(len(dataset)) if workers is None else workers
        decoded: dict[str, Any] = {}

        def end_to_end() -> float:  # decode in loader workers, copy, forward: what the filter stage runs
            _sync(device)
            t = time.perf_counter()
            feats, ok = encode_dataset(clip, dataset, batch, workers=n_workers)
            _sync(device)
            decoded.update(features=list(feats.shape), all_decoded=bool(ok.all()))
            return images / (time.perf_counter() - t)

        def encoder_only() -> float:
            _sync(device)
            t = time.perf_counter()
            for _ in range(max(1, images // batch)):
                clip.encode(resident)
            _sync(device)
            return max(1, images // batch) * batch / (time.perf_counter() - t)

        def decode_only() -> float:  # the CPU side alone (in gpu mode: reading the bytes)
            t = time.perf_counter()
            for _ in image_loader(dataset, batch_size=batch, device=device, workers=n_workers):
                pass
            return images / (time.perf_counter() - t)

        ratio = paired_rounds(
            "filtering end to end / encoder only (images/s)",
            {"end_to_end": end_to_end, "encoder": encoder_only, "decode": decode_only},
            lambda v: v["end_to_end"] / v["encoder"],
            rounds=rounds,
        )
    med = {k: statistics.median(v) for k, v in ratio.sides.items()}
    return {
        "model": model,
        "random_weights": pretrained is None,
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") else cpu_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": available_cpus(),
        "loader_workers": n_workers,
        "decode": mode,
        "images": images,
        "jpeg_px": size,
        "batch_size": batch,
        **decoded,
        "end_to_end_images_per_s": round(med["end_to_end"], 1),
        "encoder_images_per_s": round(med["encoder"], 1),
        "decode_images_per_s": round(med["decode"], 1),
        "end_to_end_over_encoder": ratio.as_json(),
        "headline": ratio.text(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--smoke", action="store_true", help="the tiny CLIP on 8 images, batch 4: checks the code path"
    )
    p.add_argument("--model", default="ViT-B-16", help="open_clip architecture or model folder reference")
    p.add_argument("--pretrained", default=None, help="open_clip pretrained tag (default: random weights)")
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--size", type=int, default=256, help="JPEG side in pixels (the paper's images: 256)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: CPUs - 1)")
    p.add_argument("--rounds", type=int, default=3, help="measured rounds (after one warm-up round)")
    p.add_argument("--decode", choices=["full", "reduced", "gpu"], default=None, help="filter.decode")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    if args.smoke:
        args.images, args.batch_size, args.threads = 8, 4, args.threads or 1
        args.model, args.pretrained = "tiny://clip", None  # built locally (synthrec.tiny)
        args.device = args.device or "cpu"
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and not args.smoke:
        print("no GPU: run with --smoke for a CPU check of the code path", file=sys.stderr)
    from rounds import torch_threads

    with torch_threads(args.threads):
        result = measure(
            args.model,
            args.pretrained,
            args.images,
            args.size,
            args.batch_size,
            args.workers,
            device,
            args.rounds,
            args.decode,
        )
    result["smoke"] = args.smoke
    print(result["headline"])
    print(json.dumps({"bench": "features_gpu", **result}))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
