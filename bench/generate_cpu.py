"""Generate-stage throughput on the CPU with the tiny Stable Diffusion model: the worker vs. a naive loop.

Both run in this process, on the same tiny model (RANDOM weights, 64 px), the same prompts, steps,
guidance and per-image seeds, writing to the same kind of storage:

- worker: ``python -m synthrec.workers generate`` as the CLI runs it (run_stage with a task file):
  batches across prompts, JPEG encoding and tar writing on a background thread, one tar upload per shard.
- naive: one prompt per pipeline call, then a synchronous JPEG encode and one upload per image (and one
  per image's JSON), the way a first script would do it.

    python bench/generate_cpu.py                         # 64 images, batch 8, 4 steps, 3 repeats
    python bench/generate_cpu.py --images-per-prompt 16 --batch-size 16 --threads 2 --repeats 5
    python bench/generate_cpu.py --moto                  # uploads to a local S3 server (moto, a subprocess)
    python bench/generate_cpu.py --storage s3://bucket/bench/   # a real S3 (AWS_* from the environment)

Prints the median images/s of each, the speed-up (worker / naive) and the share of wall time the model is
busy (seconds inside pipeline calls / wall seconds of the generation), then one line of JSON.
The wall time of both includes loading the pipeline and uploading; the first diffusers import is not
timed (it happens once, before either).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from machine import cpu_name

RESOURCE_NAME = "bench-generate"


def dataset_spec(model_uri: str, out_uri: str, args: argparse.Namespace, *, shards: int = 1) -> Any:
    from synthrec.api import SyntheticDatasetSpec

    return SyntheticDatasetSpec.model_validate(
        {
            "labels": {"preset": "tiny"},
            "prompts": {"templates": ["a photo of a {}.", "a drawing of a {}."]},
            "generator": {
                "model": model_uri,
                "steps": args.steps,
                "guidanceScale": args.guidance,
                "resolution": args.resolution,
                "imagesPerPrompt": args.images_per_prompt,
                "batchSize": args.batch_size,
                "dtype": args.dtype,
                "compile": getattr(args, "compile", False),
                **({"scheduler": args.scheduler} if getattr(args, "scheduler", None) else {}),
            },
            "sharding": {"shards": shards},
            "output": {"uri": out_uri},
        }
    )


def run_stage_in_process(spec: Any, stage: str, folder: Path, shard: int | None = None) -> dict[str, Any]:
    """Run one stage exactly as the CLI does; returns its termination summary (raises if it failed)."""
    from synthrec.contract import ENV_TERMINATION_LOG, parse_summary
    from synthrec.plan import dataset_task
    from synthrec.plan.tasks import ResourceRef, dump_task
    from synthrec.workers import generate, prompts
    from synthrec.workers.runtime import run_stage

    folder.mkdir(parents=True, exist_ok=True)
    task = folder / f"{stage}.json"
    task.write_text(
        dump_task(dataset_task(spec, stage, ResourceRef(kind="SyntheticDataset", name=RESOURCE_NAME)))
    )
    log = folder / f"{stage}-termination-log"
    os.environ[ENV_TERMINATION_LOG] = str(log)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        code = run_stage(stage, {"prompts": prompts.run, "generate": generate.run}[stage], str(task), shard)
    finally:
        signal.signal(signal.SIGTERM, previous)
    parsed = parse_summary(log.read_text())
    summary = parsed.model_dump() if parsed is not None else {}
    if code != 0:
        raise SystemExit(f"{stage} failed with exit code {code}: {summary.get('message')}")
    return summary


def run_worker(model_uri: str, out_uri: str, folder: Path, args: argparse.Namespace) -> dict[str, float]:
    spec = dataset_spec(model_uri, out_uri, args)
    run_stage_in_process(spec, "prompts", folder)
    started = time.perf_counter()
    summary = run_stage_in_process(spec, "generate", folder, 0)
    wall = time.perf_counter() - started
    return {
        "images": summary["images"],
        "wall_s": wall,
        "model_s": summary["seconds_model"],
        "images_per_s": summary["images"] / wall,
        "model_busy": summary["seconds_model"] / wall,
        "writer_wait_s": summary["seconds_writer_wait"],
    }


def run_naive(
    model_uri: str, out_uri: str, folder: Path, args: argparse.Namespace, batch: int = 1
) -> dict[str, float]:
    """``batch`` prompts per call (1: one), synchronous encode and upload per image; same prompts, seeds
    and settings. Batched, it separates what batching gives from what the worker's overlapped I/O gives."""
    import torch
    from diffusers import AutoPipelineForText2Image

    from synthrec.api.labels import resolve_labels
    from synthrec.plan import dataset_hashes
    from synthrec.storage import open_storage
    from synthrec.workers.prompts import build_prompts
    from synthrec.workers.workitems import shard_items

    spec = dataset_spec(model_uri, out_uri, args)
    storage = open_storage(out_uri)
    rows = build_prompts(spec, resolve_labels(spec.labels)).rows
    items = list(shard_items(rows, shard=0, shards=1, stage_hash=dataset_hashes(spec)["generate"]))
    started = time.perf_counter()
    pipe = AutoPipelineForText2Image.from_pretrained(model_uri.removeprefix("file://"))
    pipe.set_progress_bar_config(disable=True)
    model = 0.0
    for start in range(0, len(items), batch):
        group = items[start : start + batch]
        t = time.perf_counter()
        images = pipe(
            [item.prompt for item in group],
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            height=args.resolution,
            width=args.resolution,
            generator=[torch.Generator("cpu").manual_seed(item.seed) for item in group],
        ).images
        model += time.perf_counter() - t
        for item, image in zip(group, images, strict=True):
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=95)
            storage.write_bytes(f"naive/{item.key}.jpg", buf.getvalue())
            storage.write_bytes(
                f"naive/{item.key}.json",
                json.dumps({"class": item.class_index, "prompt": item.prompt, "seed": item.seed}).encode(),
            )
    wall = time.perf_counter() - started
    return {
        "images": len(items),
        "wall_s": wall,
        "model_s": model,
        "images_per_s": len(items) / wall,
        "model_busy": model / wall,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models",
        type=Path,
        default=Path(tempfile.gettempdir()) / "synthrec-tiny-models",
        help="where the tiny models are (built there on first use)",
    )
    parser.add_argument("--storage", default=None, help="output root (default: a temporary file:// folder)")
    parser.add_argument("--moto", action="store_true", help="write to a local moto S3 server (started here)")
    parser.add_argument("--images-per-prompt", type=int, default=8, help="4 classes x 2 prompts x this")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=3, help="measured rounds (at least 3)")
    parser.add_argument("--smoke", action="store_true", help="16 images, batch 4, 2 steps: checks the path")
    args = parser.parse_args(argv)
    if args.smoke:
        args.images_per_prompt, args.batch_size, args.steps = 2, 4, 2
        args.threads = args.threads or 1

    import logging

    logging.basicConfig(level=logging.WARNING)

    from synthrec.tiny import build_tiny_models

    tiny = build_tiny_models(args.models)
    import diffusers.utils.logging  # imported once, untimed, for both contenders
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()

    from rounds import paired_rounds, torch_threads

    model_uri = tiny.sd.as_uri()
    runners = {
        "worker": run_worker,
        "naive": run_naive,
        "naive_batched": lambda *a: run_naive(*a, batch=args.batch_size),
    }
    results: dict[str, list[dict[str, float]]] = {name: [] for name in runners}
    counter = iter(range(10**6))

    def side(name: str) -> Any:
        def run() -> float:
            n = next(counter)
            out = f"{base.rstrip('/')}/{name}-{n}-{time.time_ns()}/"
            result = runners[name](model_uri, out, Path(tmp, f"{name}-{n}"), args)
            results[name].append(result)
            print(
                f"{name:13s}: {result['images']} images in {result['wall_s']:.2f} s = "
                f"{result['images_per_s']:.2f} img/s, model busy {result['model_busy']:.0%}",
                file=sys.stderr,
            )
            return result["images_per_s"]

        return run

    with (
        tempfile.TemporaryDirectory(prefix="synthrec-bench-") as tmp,
        _storage(args, Path(tmp)) as base,
        torch_threads(args.threads) as threads,
    ):
        # one warm-up round (first pipeline calls are slow), then per-round ratios of images/s
        rounds = paired_rounds(
            "worker / naive (images/s)",
            {name: side(name) for name in runners},
            lambda v: v["worker"] / v["naive"],
            rounds=args.repeats,
        )
    measured = {name: runs[1:] for name, runs in results.items()}  # the warm-up round left out
    ratios = {
        "worker_over_naive": rounds,
        "worker_over_naive_batched": _ratio(rounds, "worker", "naive_batched", "overlapped I/O"),
        "naive_batched_over_naive": _ratio(rounds, "naive_batched", "naive", "batching alone"),
    }

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in measured[name])

    summary = {
        "bench": "generate_cpu",
        "smoke": args.smoke,
        "model": "tiny SD (random weights)",
        "images": measured["worker"][0]["images"],
        "resolution": args.resolution,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "threads": threads,
        "repeats": args.repeats,
        "cpu": cpu_name(),
        "storage": "moto S3" if args.moto else ("s3" if (args.storage or "").startswith("s3://") else "file"),
        **{f"{name}_images_per_s": round(median(name, "images_per_s"), 3) for name in runners},
        **{f"{name}_model_busy": round(median(name, "model_busy"), 3) for name in runners},
        "worker_writer_wait_s": round(median("worker", "writer_wait_s"), 3),
        **{name: r.as_json() for name, r in ratios.items()},
    }
    for r in ratios.values():
        print(r.text())
    print(
        f"model busy {summary['worker_model_busy']:.0%} (worker), {summary['naive_batched_model_busy']:.0%} "
        f"(naive batched), {summary['naive_model_busy']:.0%} (naive) of wall time"
    )
    print(json.dumps(summary))
    return 0


def _ratio(rounds: Any, top: str, bottom: str, what: str) -> Any:
    """Another per-round ratio of the same rounds' images/s."""
    from rounds import Ratio

    per_round = [t / b for t, b in zip(rounds.sides[top], rounds.sides[bottom], strict=True)]
    return Ratio(f"{top} / {bottom} ({what})", per_round)


@contextlib.contextmanager
def _storage(args: argparse.Namespace, tmp: Path) -> Iterator[str]:
    """The output root: --storage, or a local moto S3 server in a subprocess (--moto), or a temp folder."""
    if not args.moto:
        yield args.storage or (tmp / "out").as_uri() + "/"
        return
    import boto3

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the moto S3 server did not start") from None
                time.sleep(0.1)
        endpoint = f"http://127.0.0.1:{port}"
        os.environ.update(
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_ENDPOINT_URL=endpoint,
        )
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="synthrec-bench")
        yield "s3://synthrec-bench/"
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    raise SystemExit(main())
