"""Is the pre-training loader the bottleneck? Ratios measured in one run.

CPU (default): on a dataset of drawn JPEGs written by the real shard writer and reduce stage,

- **decode-only**: ``torchvision.io.decode_image`` on the shards' JPEG bytes already in memory, one
  process: the floor cost of an image;
- **loader, one worker**: the real pipeline in one process (synthrec.workers.pretrain.data.ShardStream:
  index files, tar streaming, selection, interleaving, shuffle buffer, decode, transforms v2 augmentation,
  batching) for the supervised (ResNet recipe) and the MoCo v2 (two augmented views) objective;
- **loader, W workers**: the same through a DataLoader with W workers (images/s over W x one worker).

Ratios: loader per worker / decode-only (what streaming and augmentation cost on top of decoding) and the
DataLoader's scaling over its workers.

GPU (``--gpu``): end-to-end pre-training steps fed by the loader vs. the same steps on a synthetic tensor
batch already on the device (the ceiling); the goal is >= 90 %. ResNet-50 at 224 px, bf16, channels-last.

    python bench/pretrain_loader.py                         # CPU, 512 images of 256 px, 224 px crops
    python bench/pretrain_loader.py --images 2048 --workers 2
    python bench/pretrain_loader.py --gpu --workers 12 --batch 256   # on a GPU machine

Prints a table and one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name


def dataset(root: Path, images: int, size: int) -> str:
    from tests.harness.pretraining import write_synthetic_dataset

    uri, _ = write_synthetic_dataset(root, per_class=images // 4, shards=8, size=size)
    return uri


def task(uri: str, objective: str, image_size: int, batch: int, workers: int) -> Any:
    from synthrec.plan.tasks import PretrainTask

    return PretrainTask.model_validate(
        {
            "resource": {"kind": "RecognitionExperiment", "name": "bench"},
            "output": {"uri": "file:///tmp/unused/"},
            "spec_hash": "bench",
            "run": "bench",
            "objective": objective,
            "backbone": "resnet50",
            "batch_size": batch,
            "data": {"synthetic": [{"uri": uri}], "image_size": image_size, "loader_workers": workers},
        }
    )


def stream(t: Any, workers: int, batch: int) -> Any:
    from synthrec.workers.pretrain.data import LoaderConfig, ShardStream, plan_data, read_manifest
    from synthrec.workers.pretrain.recipes import resolve_recipe

    plan = plan_data(t, [read_manifest(s, None, None) for s in t.data.synthetic], [])
    recipe = resolve_recipe(t.objective, False, batch)
    steps = plan.epoch_samples // batch
    config = LoaderConfig(
        rank=0,
        world=1,
        workers=workers,
        local_batch=batch,
        steps_per_epoch=steps,
        seed=0,
        image_size=t.data.image_size,
        objective=t.objective,
        randaugment=recipe.randaugment,
        shuffle_buffer=t.data.shuffle_buffer,
    )
    return ShardStream(plan, config), steps


def decode_only(uri: str) -> float:
    import tarfile

    import torch
    from torchvision.io import ImageReadMode, decode_image

    blobs = []
    for tar in sorted(Path(uri.removeprefix("file://")).glob("shards/*.tar")):
        with tarfile.open(tar) as t:
            blobs += [t.extractfile(m).read() for m in t.getmembers() if m.name.endswith(".jpg")]  # type: ignore[union-attr]
    started = time.perf_counter()
    for data in blobs:
        decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    return len(blobs) / (time.perf_counter() - started)


def loader_rate(uri: str, objective: str, image_size: int, batch: int, workers: int) -> float:
    import torch

    s, steps = stream(task(uri, objective, image_size, batch, workers), workers, batch)
    s.set_epoch(0)
    loader = torch.utils.data.DataLoader(
        s, batch_size=None, num_workers=workers, prefetch_factor=4 if workers else None
    )
    it = iter(loader)
    next(it)  # start-up (workers, first shards, shuffle buffer) is not the steady rate
    started = time.perf_counter()
    n = 0
    for _ in range(steps - 1):
        next(it)
        n += batch
    return n / (time.perf_counter() - started)


def gpu(uri: str, batch: int, workers: int, steps: int) -> dict[str, Any]:
    import timm
    import torch
    import torch.nn.functional as F

    from synthrec.workers.pretrain.augment import DeviceAugment

    device = torch.device("cuda")
    model = timm.create_model("resnet50", num_classes=4).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    aug = DeviceAugment(num_classes=None)

    def step(images: Any, labels: Any) -> None:
        x = aug.normalise(images).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    fake = torch.randint(0, 255, (batch, 3, 224, 224), dtype=torch.uint8, device=device)
    fake_y = torch.randint(0, 4, (batch,), device=device)
    for _ in range(5):
        step(fake, fake_y)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step(fake, fake_y)
    torch.cuda.synchronize()
    ceiling = steps * batch / (time.perf_counter() - t0)
    s, epoch_steps = stream(task(uri, "supervised", 224, batch, workers), workers, batch)
    s.set_epoch(0)
    loader = torch.utils.data.DataLoader(
        s, batch_size=None, num_workers=workers, pin_memory=True, prefetch_factor=4
    )
    it = iter(loader)
    images, labels = next(it)
    step(images.to(device, non_blocking=True), labels.to(device, non_blocking=True))
    torch.cuda.synchronize()
    n = min(steps, epoch_steps - 1)
    t0 = time.perf_counter()
    for _ in range(n):
        images, labels = next(it)
        step(images.to(device, non_blocking=True), labels.to(device, non_blocking=True))
    torch.cuda.synchronize()
    end_to_end = n * batch / (time.perf_counter() - t0)
    return {
        "ceiling_img_s": round(ceiling, 1),
        "end_to_end_img_s": round(end_to_end, 1),
        "share": round(end_to_end / ceiling, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=256, help="stored image size (px)")
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of this process")
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--steps", type=int, default=50, help="GPU: measured steps")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="synthrec-bench-") as tmp:
        uri = dataset(Path(tmp), args.images, args.size)
        if args.gpu:
            result = {
                "cpu": cpu_name(),
                "gpu": torch.cuda.get_device_name(),
                "batch": args.batch,
                "workers": args.workers,
                **gpu(uri, args.batch, args.workers, args.steps),
            }
            print(
                f"end to end {result['end_to_end_img_s']} img/s vs synthetic input "
                f"{result['ceiling_img_s']} img/s: "
                f"{100 * result['share']:.1f} % (goal >= 90 %)"
            )
            print(json.dumps(result))
            return
        decode = decode_only(uri)
        rows = {"decode-only": decode}
        for objective in ("supervised", "moco-v2"):
            rows[f"{objective}, 1 worker"] = loader_rate(uri, objective, args.crop, args.batch, 0)
            if args.workers > 1:
                rows[f"{objective}, {args.workers} workers"] = loader_rate(
                    uri, objective, args.crop, args.batch, args.workers
                )
    print(f"{cpu_name()}; {args.images} images of {args.size} px, crops {args.crop}, batch {args.batch}")
    print(f"{'pipeline':<28} {'img/s':>8} {'vs decode-only':>15}")
    for name, rate in rows.items():
        print(f"{name:<28} {rate:8.1f} {rate / decode:14.2f}x")
    result = {k: round(v, 1) for k, v in rows.items()}
    for objective in ("supervised", "moco-v2"):
        result[f"{objective} per-worker / decode-only"] = round(rows[f"{objective}, 1 worker"] / decode, 3)
        if args.workers > 1:
            many = rows[f"{objective}, {args.workers} workers"]
            result[f"{objective} {args.workers}-worker scaling"] = round(
                many / (args.workers * rows[f"{objective}, 1 worker"]), 3
            )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
