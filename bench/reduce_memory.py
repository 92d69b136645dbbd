"""Reduce's memory at millions of images: what it keeps per image, against the stated bound.

Writes features files (format 2: fp16 logits, random) and their markers for ``--images`` images in
shards of ``--per-shard`` to a local folder, runs the reduce stage on them in this process, and measures
the growth of the traced peak (tracemalloc: Python objects and numpy's buffers) during the stage. A
second run on a tenth of the shards gives the fixed part (shards in flight, the model of the run), so
the difference is what reduce keeps per image, as tests/unit/test_reduce_memory.py measures it at 160k.

    python bench/reduce_memory.py                       # 4,000,000 images, 1,000 shards of 4,000
    python bench/reduce_memory.py --images 400000       # a tenth

Prints bytes per image (goal: MAX_BYTES_PER_IMAGE), the peak at --images and its share of 1 GB, then one
line of JSON. It answers whether reduce fits a small pod at this scale; not how fast it reads a real
object store (the shards are local files).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GiB = 2**30


def reduce_peak(folder: Path, shards: int, per_shard: int, classes: int) -> tuple[int, dict[str, Any], float]:
    from synthrec import contract
    from synthrec.api import SyntheticDatasetSpec
    from synthrec.plan import dataset_task
    from synthrec.plan.tasks import ResourceRef, dump_task
    from synthrec.storage import open_storage
    from synthrec.workers import reduce as reduce_stage
    from synthrec.workers.runtime import run_stage
    from tests.harness.stages import write_scored_shards

    spec = SyntheticDatasetSpec.model_validate(
        {
            "labels": {"classes": [{"name": f"class {i}"} for i in range(classes)]},
            "generator": {"model": "tiny://sd"},
            "filter": {"keepPerClass": 50, "clip": {"model": "RN50"}},
            "sharding": {"shards": shards},
            "output": {"uri": folder.as_uri() + "/"},
        }
    )
    task = dataset_task(spec, "reduce", ResourceRef(kind="SyntheticDataset", name="bench"))
    storage = open_storage(spec.output.uri)
    write_scored_shards(storage, task.hashes, range(shards), per_shard, classes)
    task_file = folder / "task.json"
    task_file.write_text(dump_task(task))
    os.environ[contract.ENV_TERMINATION_LOG] = str(folder / "termination-log")
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        t = time.perf_counter()
        if run_stage("reduce", reduce_stage.run, str(task_file), 0) != 0:
            raise SystemExit((folder / "termination-log").read_text())
        seconds = time.perf_counter() - t
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - before, storage.read_json("manifest.json"), seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=4_000_000)
    p.add_argument("--per-shard", type=int, default=4000)
    p.add_argument("--classes", type=int, default=10, help="keepPerClass is 50: the kept set stays small")
    args = p.parse_args(argv)
    from synthrec.workers.reduce_collect import MAX_BYTES_PER_IMAGE

    shards = max(10, args.images // args.per_shard)
    with tempfile.TemporaryDirectory(prefix="synthrec-reduce-memory-") as tmp:
        small, _, _ = reduce_peak(Path(tmp, "small"), shards // 10, args.per_shard, args.classes)
        large, manifest, seconds = reduce_peak(Path(tmp, "large"), shards, args.per_shard, args.classes)
    images = shards * args.per_shard
    per_image = (large - small) / (images - (shards // 10) * args.per_shard)
    result = {
        "bench": "reduce_memory",
        "images": images,
        "shards": shards,
        "classes": args.classes,
        "generated": manifest["counts"]["generated"],
        "kept": manifest["counts"]["kept"],
        "peak_bytes": large,
        "peak_share_of_1_GiB": round(large / GiB, 4),
        "bytes_per_image": round(per_image, 1),
        "max_bytes_per_image": MAX_BYTES_PER_IMAGE,
        "reduce_seconds": round(seconds, 1),
    }
    print(
        f"{images:,} images: reduce keeps {per_image:.1f} B per image (bound {MAX_BYTES_PER_IMAGE}); "
        f"traced peak {large / 2**20:.0f} MiB = {large / GiB:.1%} of 1 GiB; {seconds:.0f} s"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
