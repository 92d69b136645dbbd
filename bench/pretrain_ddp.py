"""DDP scaling efficiency of the pretrain stage from 1 to N processes, measured in one run.

The real stage (``python -m synthrec.workers pretrain``: torchrun, DistributedDataParallel, the shard
stream) pre-trains for a fixed number of steps with the same per-process batch (weak scaling), first
with one process and then with N; each run's ``images_per_s`` (metrics.json: images over the time spent
in training steps, data waits included, start-up excluded) gives

    efficiency = images/s with N processes / (N x images/s with one process)

CPU (default): gloo, one thread per process, timm's ``test_resnet`` at 64 px, N = the number of cores.
GPU (``--gpu``): NCCL, one process per GPU, ResNet-50 at 224 px in bf16.

    python bench/pretrain_ddp.py                  # CPU, 1 -> 2 processes
    python bench/pretrain_ddp.py --gpu --nproc 8  # on an 8-GPU machine

Prints a table and one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name


def run(root: Path, uri: str, nproc: int, args: argparse.Namespace, objective: str) -> dict[str, Any]:
    from synthrec.plan.tasks import PretrainTask

    out = root / f"{objective}-{nproc}"
    task = PretrainTask.model_validate(
        {
            "resource": {"kind": "RecognitionExperiment", "name": "bench"},
            "output": {"uri": out.as_uri() + "/"},
            "spec_hash": "bench",
            "run": "bench",
            "objective": objective,
            "backbone": args.backbone,
            "batch_size": args.batch * nproc,
            "max_steps": args.steps,
            "epochs": 1000,
            "log_every": 1000,
            "moco": {"queue": args.batch * nproc * 4},
            "data": {"synthetic": [{"uri": uri}], "image_size": args.crop, "loader_workers": args.workers},
            "distributed": {"nproc_per_node": nproc},
        }
    )
    path = root / f"{objective}-{nproc}.json"
    path.write_text(task.model_dump_json())
    env = {**os.environ, "SYNTHREC_TERMINATION_LOG": str(root / f"{objective}-{nproc}.log")}
    if not args.gpu:  # one thread per process, with one process as with N (torchrun would set N threads/N)
        env.update(SYNTHREC_DEVICE="cpu", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "synthrec.workers", "pretrain", "--task", str(path)],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads((out / "runs" / "bench" / "pretrain" / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--nproc", type=int, default=None, help="N (default: cores on CPU, GPUs with --gpu)")
    parser.add_argument("--batch", type=int, default=None, help="per-process batch (CPU 16, GPU 128)")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (CPU 40, GPU 200)")
    parser.add_argument("--workers", type=int, default=None, help="loader workers per process (CPU 0, GPU 8)")
    parser.add_argument("--images", type=int, default=None, help="dataset size (CPU 512, GPU 8192)")
    parser.add_argument("--objective", choices=["supervised", "moco-v2", "both"], default="both")
    args = parser.parse_args()
    import torch

    gpu = args.gpu
    args.nproc = args.nproc or (torch.cuda.device_count() if gpu else (os.cpu_count() or 2))
    args.batch = args.batch or (128 if gpu else 16)
    args.steps = args.steps or (200 if gpu else 40)
    args.workers = args.workers if args.workers is not None else (8 if gpu else 0)
    args.images = args.images or (8192 if gpu else 512)
    args.backbone, args.crop, size = ("resnet50", 224, 256) if gpu else ("test_resnet", 64, 64)
    objectives = ["supervised", "moco-v2"] if args.objective == "both" else [args.objective]
    with tempfile.TemporaryDirectory(prefix="synthrec-ddp-") as tmp:
        from tests.harness.pretraining import write_synthetic_dataset

        uri, _ = write_synthetic_dataset(Path(tmp), per_class=args.images // 4, shards=32, size=size)
        result: dict[str, Any] = {
            "cpu": cpu_name(),
            "gpu": torch.cuda.get_device_name() if gpu else None,
            "nproc": args.nproc,
            "per_process_batch": args.batch,
            "steps": args.steps,
        }
        print(
            f"{result['gpu'] or result['cpu']}: {args.backbone} at {args.crop} px, "
            f"{args.batch} images per process"
        )
        print(f"{'objective':<12} {'1 proc img/s':>13} {f'{args.nproc} procs img/s':>15} {'efficiency':>11}")
        for objective in objectives:
            one = run(Path(tmp), uri, 1, args, objective)["images_per_s"]
            many = run(Path(tmp), uri, args.nproc, args, objective)["images_per_s"]
            efficiency = many / (args.nproc * one)
            print(f"{objective:<12} {one:13.1f} {many:15.1f} {efficiency:10.2f}")
            result[objective] = {"one": one, "many": many, "efficiency": round(efficiency, 3)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
