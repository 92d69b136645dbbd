"""Why the train stage caches features, and why feature extraction is batched (tiny model; the
accelerator when there is one).

1. One epoch of Classifier Tuning on features cached once (the paper's CT, our train stage) vs. one epoch
   that decodes and encodes every image again first (JPEG decode + preprocess + encoder forward, then the
   head steps). The ratio is per epoch: the cached side's time is its E epochs divided by E, the one-off
   encode is not in it, so the ratio does not grow with E (the old total-time ratio equalled E by
   construction when encoding dominates).
2. Feature extraction at the chosen batch size vs. batch 1.

Both use the real code paths (synthrec.workers.clip.encode_dataset over a WebDataset shard,
synthrec.workers.tuning.tune) under the same thread setting (``--threads``, both sides), after one
warm-up round, over ``--rounds`` rounds in alternating order; each headline is the median of the
per-round ratios with its spread (bench/rounds.py). The tiny open_clip model (random weights, 64 px) is
built locally; ``--vit-b16 N`` repeats both with ViT-B-16 (random weights) on N images. It answers what
caching saves per epoch on this model and machine, not how long a whole train stage takes.

    python bench/train_features.py --threads 1      # tiny model: 512 images, 10 epochs, batch 128
    python bench/train_features.py --vit-b16 16     # plus ViT-B-16 on 16 images (slow on a CPU)
    python bench/train_features.py --smoke          # 32 images: checks the code path

Prints the headlines and one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
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
    ref: str,
    pretrained: str | None,
    images: int,
    size: int,
    epochs: int,
    batch: int,
    rounds: int,
    device: str,
    classes: int = 4,
) -> dict[str, Any]:
    import torch
    from rounds import paired_rounds

    from synthrec.workers.clip import encode_dataset, load_clip
    from synthrec.workers.tuning import CachedFeatures, LinearHead, tune

    clip = load_clip(ref, pretrained, device)
    text = clip.text_head([f"class {i}" for i in range(classes)], ["a photo of a {c}."])
    labels = torch.tensor([i % classes for i in range(images)])

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def heads() -> tuple[Any, Any]:
        return LinearHead.from_text(text, clip.logit_scale), LinearHead.from_text(text, clip.logit_scale)

    def train(feats: Any, n_epochs: int) -> None:
        student, teacher = heads()
        tune(
            student,
            teacher,
            CachedFeatures(feats, None),
            feats,
            labels,
            None,
            _tune_config(n_epochs, batch),
            0,
        )

    with tempfile.TemporaryDirectory() as tmp:
        tar = Path(tmp) / "shard.tar"
        write_jpeg_tar(tar, images, size, classes=classes)
        dataset = shard_dataset(clip, tar, classes)
        cached_feats, _ = encode_dataset(clip, dataset, batch, workers=0)

        # 1. one epoch of Classifier Tuning: on the features cached once (the train stage), or after
        #    decoding and encoding every image again (what a loop without the cache pays every epoch)
        def cached_epoch() -> float:
            sync()
            t = time.perf_counter()
            train(cached_feats, epochs)
            sync()
            return (time.perf_counter() - t) / epochs

        def reencode_epoch() -> float:
            sync()
            t = time.perf_counter()
            feats, _ = encode_dataset(clip, dataset, batch, workers=0)
            train(feats, 1)
            sync()
            return time.perf_counter() - t

        per_epoch = paired_rounds(
            "tuning per epoch: re-encoding / cached features (seconds)",
            {"cached": cached_epoch, "reencode": reencode_epoch},
            lambda v: v["reencode"] / v["cached"],
            rounds=rounds,
        )

        # 2. feature extraction at the batch size vs. batch 1 (decode included in both)
        def extract(size_: int) -> Callable[[], float]:
            def run() -> float:
                sync()
                t = time.perf_counter()
                encode_dataset(clip, dataset, size_, workers=0)
                sync()
                return time.perf_counter() - t

            return run

        batching = paired_rounds(
            "feature extraction: batch 1 / batched (seconds)",
            {"batched": extract(batch), "batch1": extract(1)},
            lambda v: v["batch1"] / v["batched"],
            rounds=rounds,
        )

    return {
        "model": ref,
        "device": device,
        "images": images,
        "jpeg_px": size,
        "epochs_per_cached_round": epochs,
        "batch_size": batch,
        "reencode_over_cached_per_epoch": per_epoch.as_json(),
        "batched_over_batch1": batching.as_json(),
        "headlines": [per_epoch.text(), batching.text()],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--vit-b16", type=int, default=0, metavar="N", help="also ViT-B-16 (random) on N images")
    p.add_argument("--threads", type=int, default=None, help="torch threads, both sides (default: torch's)")
    p.add_argument("--rounds", type=int, default=3, help="measured rounds (after one warm-up round)")
    p.add_argument("--smoke", action="store_true", help="32 images, 2 epochs, batch 8: checks the code path")
    args = p.parse_args(argv)
    if args.smoke:
        args.images, args.epochs, args.batch_size, args.vit_b16 = 32, 2, 8, 0
        args.threads = args.threads or 1
    from rounds import torch_threads

    from synthrec.workers.runtime import select_device

    device = select_device()
    with torch_threads(args.threads) as threads:
        results = [
            bench_model(
                "tiny://clip", None, args.images, 64, args.epochs, args.batch_size, args.rounds, device
            )
        ]
        results[0]["model"] = "tiny://clip (64 px, random weights)"
        if args.vit_b16:
            vit = bench_model(
                "ViT-B-16",
                None,
                args.vit_b16,
                256,
                2,
                min(args.batch_size, args.vit_b16),
                args.rounds,
                device,
            )
            vit["model"] = "ViT-B-16 (224 px, random weights)"
            results.append(vit)
    for r in results:
        for line in r["headlines"]:
            print(f"{r['model']}: {line}")
    print(
        json.dumps({"bench": "train_features", "threads": threads, "smoke": args.smoke, "results": results})
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
