"""A stand-in for ``python -m synthrec.workers`` in the runner's unit tests: same CLI, same runtime
(``synthrec.workers.runtime.run_stage``: task file, shard from JOB_COMPLETION_INDEX, termination log,
exit codes, SIGTERM), but each stage only writes small artifacts with the real commit markers, at once.

Behaviour per call comes from the JSON file $FAKE_PLAN: {"generate:1": ["retry", "ok"], ...}, one action
per try of that stage and shard (the last one repeats; missing keys mean "ok"):

  ok      commit the shard's artifacts      retry   exit 1 (RetryableError)
  data    exit 42 (DataError)               config  exit 3 (ConfigError)
  hang    wait for SIGTERM, commit nothing  crash   die without a summary (os._exit(1))
  noop    exit 0 without committing (a worker bug)

Every call appends one JSON line to $FAKE_STATE/calls.jsonl (stage, shard, completion index, task attempt
and shard_ids, thread variables), so tests can see exactly what ran.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from synthrec.api.labels import resolve_labels
from synthrec.contract.layout import DatasetLayout, ExperimentLayout
from synthrec.contract.summaries import (
    FilterSummary,
    GenerateSummary,
    PromptsSummary,
    ReduceSummary,
    Summary,
    TrainSummary,
)
from synthrec.storage import commit_file, write_marker
from synthrec.workers.runtime import ConfigError, DataError, RetryableError, StageContext, run_stage
from tests.harness.artifacts import dataset_manifest, run_metrics


def _action(stage: str, shard: int) -> str:
    plan_path = os.environ.get("FAKE_PLAN")
    plan: dict[str, list[str]] = json.loads(Path(plan_path).read_text()) if plan_path else {}
    key = f"{stage}:{shard}"
    state = Path(os.environ["FAKE_STATE"])
    counter = state / f"tries-{stage}-{shard}"
    tries = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(tries + 1))
    actions = plan.get(key) or ["ok"]
    return actions[min(tries, len(actions) - 1)]


def _record(ctx: StageContext, action: str, **extra: Any) -> None:
    row = {
        "stage": ctx.stage,
        "shard": ctx.shard,
        "index": int(os.environ.get("JOB_COMPLETION_INDEX", "-1")),
        "attempt": ctx.task.attempt,
        "shard_ids": ctx.task.shard_ids,
        "omp": os.environ.get("OMP_NUM_THREADS"),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "action": action,
        **extra,
    }
    with open(Path(os.environ["FAKE_STATE"]) / "calls.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def fake_stage(ctx: StageContext) -> Summary:
    action = _action(ctx.stage, ctx.shard)
    extra: dict[str, Any] = {}
    if ctx.stage == "train":
        extra["synthetic"] = [i.model_dump() for i in ctx.task.datasets]
        extra["run"] = ctx.task.run.name
    _record(ctx, action, **extra)
    if action == "retry":
        raise RetryableError("fake transient failure")
    if action == "data":
        raise DataError(f"fake bad input in shard {ctx.shard}")
    if action == "config":
        raise ConfigError("fake configuration error: the model does not exist")
    if action == "crash":
        os._exit(1)
    if action == "noop":  # a buggy worker: exits 0 without committing
        return _summary(ctx)
    if action == "hang":
        ctx.progress.start(10)
        marker = Path(os.environ["FAKE_STATE"]) / f"hanging-{ctx.stage}-{ctx.shard}"
        marker.write_text(str(os.getpid()))
        while True:  # SIGTERM raises Terminated in here (the runtime's handler)
            time.sleep(0.05)
    _commit(ctx)
    return _summary(ctx)


def _summary(ctx: StageContext) -> Summary:
    """What the real worker of the stage would report, with small numbers."""
    stage = ctx.stage
    if stage == "prompts":
        return PromptsSummary(prompts=1, classes=1, images=4)
    if stage == "generate":
        return GenerateSummary(images=4)
    if stage == "filter":
        return FilterSummary(images=4)
    if stage == "reduce":
        return ReduceSummary(generated=4, passed=2, kept=2, rejected=2)
    return TrainSummary(run=ctx.task.run.name, top1=40.0 + ctx.task.run.shots, zero_shot_top1=30.0)


def _commit(ctx: StageContext) -> None:
    task, storage = ctx.task, ctx.storage
    if task.stage == "train":
        name = task.run.name
        top1 = 40.0 + task.run.shots
        classes = resolve_labels(task.experiment.labels).names
        metrics = run_metrics(
            name, top1=top1, zero_shot_top1=30.0, classes=classes, shots=task.run.shots, seed=task.run.seed
        )
        storage.write_json(ExperimentLayout.run_metrics(name), metrics.document())
        storage.write_json(
            ExperimentLayout.run(name, "curve.json"), {"epochs": [{"epoch": 1, "loss": 2.0}], "steps": []}
        )
        write_marker(storage, ExperimentLayout.run_marker(name), spec_hash=task.spec_hash)
        return
    hashes = task.hashes
    names = resolve_labels(task.dataset.labels).names  # the spec's, so what the user wrote shows up
    if task.stage == "prompts":
        storage.write_bytes(DatasetLayout.prompts, b'{"class": 0, "prompt": "a photo of a cat."}\n')
        write_marker(storage, DatasetLayout.prompts_marker, spec_hash=hashes["prompts"])
    elif task.stage == "generate":
        with tempfile.NamedTemporaryFile(suffix=".tar") as tmp:
            tmp.write(f"shard {ctx.shard}".encode())
            tmp.flush()
            commit_file(
                storage,
                tmp.name,
                DatasetLayout.shard(ctx.shard),
                DatasetLayout.shard_marker(ctx.shard),
                spec_hash=hashes["generate"],
            )
    elif task.stage == "filter":
        storage.write_bytes(DatasetLayout.features(ctx.shard), b"features")
        write_marker(storage, DatasetLayout.features_marker(ctx.shard), spec_hash=hashes["filter"])
    elif task.stage == "reduce":
        manifest = dataset_manifest(hashes["reduce"], names, generated=4, passed=2, kept=2)
        storage.write_json(DatasetLayout.manifest, manifest.document())


def main() -> int:
    stage, task = sys.argv[1], sys.argv[sys.argv.index("--task") + 1]
    return run_stage(stage, fake_stage, task, None)


if __name__ == "__main__":
    raise SystemExit(main())
