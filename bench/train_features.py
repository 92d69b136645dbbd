"""Why the train stage caches features, and why feature extraction is batched (CPU, tiny model).

1. Classifier tuning for E epochs on features cached once (the paper's CT, our train stage) vs.
   re-encoding every image every epoch (JPEG decode + preprocess + encoder forward, then the head steps).
2. Feature extraction at the chosen batch size vs. batch 1.

Both use the real code paths (synthrec.workers.clip.encode_dataset over a WebDataset shard,
synthrec.workers.tuning.tune). The tiny open_clip model (random weights, 64 px) is built locally;
``--vit-b16 N`` repeats both measurements with ViT-B-16 (random weights) on N images.

    python bench/train_features.py                  # tiny model: 512 images, 10 epochs, batch 128
    python bench/train_features.py --vit-b16 16     # plus ViT-B-16 on 16 images (slow on a CPU)

Prints a table and one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from features_gpu import shard_dataset, write_jpeg_tar


def _tune_config(epochs: int, batch: int) -> Any:
    """The paper's Classifier Tuning settings (synthrec.api defaults) at this size."""
    from synthrec.api import ClassifierTuning
    from synthrec.plan import ZERO_SHOT_LR

    return ClassifierTuning(epochs=epochs, batch_size_synthetic=batch, lr=ZERO_SHOT_LR)


def bench_model(
    ref: str, pretrained: str | None, images: int, size: int, epochs: int, batch: int, classes: int = 4
) -> dict[str, Any]:
    import torch

    from synthrec.workers.clip import encode_dataset, load_clip
    from synthrec.workers.train import small_kernel_threads
    from synthrec.workers.tuning import CachedFeatures, LinearHead, tune

    clip = load_clip(ref, pretrained, "cpu")
    text = clip.text_head([f"class {i}" for i in range(classes)], ["a photo of a {c}."])
    with tempfile.TemporaryDirectory() as tmp:
        tar = Path(tmp) / "shard.tar"
        write_jpeg_tar(tar, images, size, classes=classes)
        dataset = shard_dataset(clip, tar, classes)
        labels = torch.tensor([i % classes for i in range(images)])

        def head() -> tuple[Any, Any]:
            return LinearHead.from_text(text, clip.logit_scale), LinearHead.from_text(text, clip.logit_scale)

        # 1a. cached: encode once, then E epochs on the cached features
        t = time.perf_counter()
        feats, _ = encode_dataset(clip, dataset, batch, workers=0)
        encode_once = time.perf_counter() - t
        student, teacher = head()
        # the train stage's thread policy for head-only steps on a CPU
        threads = small_kernel_threads("cpu", True, student.weight.numel() * batch)
        t = time.perf_counter()
        with threads:
            tune(
                student,
                teacher,
                CachedFeatures(feats, None),
                feats,
                labels,
                None,
                _tune_config(epochs, batch),
                0,
            )
        cached_train = time.perf_counter() - t
        cached = encode_once + cached_train

        # 1b. re-encoding: every epoch decodes and encodes every image again, then trains one epoch
        student, teacher = head()
        t = time.perf_counter()
        for _ in range(epochs):
            feats_e, _ = encode_dataset(clip, dataset, batch, workers=0)
            tune(
                student,
                teacher,
                CachedFeatures(feats_e, None),
                feats_e,
                labels,
                None,
                _tune_config(1, batch),
                0,
            )
        reencode = time.perf_counter() - t

        # 2. extraction at batch `batch` vs. batch 1 (decode included in both)
        t = time.perf_counter()
        encode_dataset(clip, dataset, 1, workers=0)
        batch1 = time.perf_counter() - t

    return {
        "model": ref,
        "images": images,
        "jpeg_px": size,
        "epochs": epochs,
        "batch_size": batch,
        "seconds": {
            "encode_once": round(encode_once, 3),
            "train_on_cached": round(cached_train, 3),
            "cached_total": round(cached, 3),
            "reencode_total": round(reencode, 3),
            "extract_batch": round(encode_once, 3),
            "extract_batch1": round(batch1, 3),
        },
        "reencode_over_cached": round(reencode / cached, 2),
        "extract_images_per_s": {
            "batch": round(images / encode_once, 1),
            "batch1": round(images / batch1, 1),
        },
        "batch_over_batch1": round(batch1 / encode_once, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--vit-b16", type=int, default=0, metavar="N", help="also ViT-B-16 (random) on N images")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    import torch

    from synthrec.tiny import build_tiny_models

    if args.threads:
        torch.set_num_threads(args.threads)
    cache = Path(os.environ.get("SYNTHREC_CACHE", Path(tempfile.gettempdir()) / "synthrec-cache")) / "tiny"
    tiny = build_tiny_models(cache)
    results = [bench_model(tiny.clip.as_uri(), None, args.images, 64, args.epochs, args.batch_size)]
    results[0]["model"] = "tiny://clip (64 px, random weights)"
    if args.vit_b16:
        vit = bench_model("ViT-B-16", None, args.vit_b16, 256, 2, min(args.batch_size, args.vit_b16))
        vit["model"] = "ViT-B-16 (224 px, random weights)"
        results.append(vit)
    print(
        f"{'model':38} {'images':>6} {'epochs':>6} {'cached s':>9} {'re-encode s':>11} {'ratio':>6} "
        f"{'batch img/s':>11} {'batch1 img/s':>12} {'ratio':>6}"
    )
    for r in results:
        s = r["seconds"]
        print(
            f"{r['model']:38} {r['images']:>6} {r['epochs']:>6} {s['cached_total']:>9.2f} "
            f"{s['reencode_total']:>11.2f} "
            f"{r['reencode_over_cached']:>6.1f} {r['extract_images_per_s']['batch']:>11.1f} "
            f"{r['extract_images_per_s']['batch1']:>12.1f} {r['batch_over_batch1']:>6.1f}"
        )
    print(json.dumps({"threads": torch.get_num_threads(), "results": results}))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
