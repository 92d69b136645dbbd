"""Pure planning shared by the operator and the local mode: spec -> stage hashes, stages, runs and tasks.

Nothing here does I/O. The operator turns the tasks into ConfigMaps and Jobs; the local executor runs
them as subprocesses. Both therefore run exactly the same stages with exactly the same task JSON.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from synthrec.api import (
    ClassifierTuning,
    RecognitionExperimentSpec,
    SyntheticDatasetSpec,
    SyntheticSource,
)
from synthrec.plan.tasks import (
    DATASET_STAGES,
    DatasetInput,
    FilterTask,
    GenerateTask,
    PromptsTask,
    ReduceTask,
    ResourceRef,
    RunPlan,
    Stage,
    StorageTarget,
    TrainTask,
)

# Bump when a change in synthrec makes old artifacts unusable for the same spec.
HASH_VERSION = "1"

ZERO_SHOT_LR = 2e-3  # paper README, zero-shot CT
FEW_SHOT_LR = 1e-3  # paper README, few-shot CT


def digest(value: Any) -> str:
    """Stable sha256 of a JSON-able value (sorted keys, compact)."""
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def dataset_hashes(spec: SyntheticDatasetSpec) -> dict[str, str]:
    """Chained hashes: a stage's hash covers its own settings and the hash of the stage before it.

    So editing only the filter (in local mode, where specs are not immutable) keeps the generated shards,
    while editing the generator invalidates generation, filtering and reduction.
    """
    w = spec.wire()
    prompts = digest({"v": HASH_VERSION, "labels": w["labels"], "prompts": w["prompts"]})
    generate = digest(
        {
            "prompts": prompts,
            "generator": w["generator"],
            "realGuidance": w.get("realGuidance"),
            "shards": w["sharding"]["shards"],
        }
    )
    filt = digest({"generate": generate, "filter": w["filter"]})
    reduce = digest({"filter": filt})
    return {"prompts": prompts, "generate": generate, "filter": filt, "reduce": reduce}


@dataclass(frozen=True)
class StageDef:
    stage: Stage
    shards: int  # total shards (1 for the single-pod stages)
    spec_hash: str
    enabled: bool = True  # the filter stage is skipped when filter.enabled is false


def dataset_stages(spec: SyntheticDatasetSpec) -> list[StageDef]:
    """The dataset's stages in dependency order."""
    hashes = dataset_hashes(spec)
    shards = spec.sharding.shards
    return [
        StageDef("prompts", 1, hashes["prompts"]),
        StageDef("generate", shards, hashes["generate"]),
        StageDef("filter", shards, hashes["filter"], enabled=spec.filter.enabled),
        StageDef("reduce", 1, hashes["reduce"]),
    ]


def storage_target(output: Any) -> StorageTarget:
    return StorageTarget(uri=output.uri, endpoint=output.endpoint, region=output.region)


_DATASET_TASKS = {
    "prompts": PromptsTask,
    "generate": GenerateTask,
    "filter": FilterTask,
    "reduce": ReduceTask,
}


def dataset_task(
    spec: SyntheticDatasetSpec,
    stage: Stage,
    resource: ResourceRef,
    *,
    attempt: int = 1,
    shard_ids: list[int] | None = None,
) -> PromptsTask | GenerateTask | FilterTask | ReduceTask:
    if stage not in DATASET_STAGES:
        raise ValueError(f"{stage!r} is not a dataset stage")
    hashes = dataset_hashes(spec)
    defs = {d.stage: d for d in dataset_stages(spec)}
    return _DATASET_TASKS[stage](
        resource=resource,
        output=storage_target(spec.output),
        spec_hash=hashes[stage],
        hashes=hashes,
        attempt=attempt,
        shards=defs[stage].shards,
        shard_ids=shard_ids,
        dataset=spec,
    )


# ----------------------------------------------------------------------------------------- experiments


def run_name(shots: int, seed: int, variant: str | None) -> str:
    base = f"shots{shots}-seed{seed}"
    return f"{base}-{variant}" if variant else base


def resolve_classifier_tuning(spec: RecognitionExperimentSpec, variant: Any | None) -> ClassifierTuning:
    ct = spec.method.classifier_tuning
    if variant is not None and variant.classifier_tuning is not None:
        overrides = variant.classifier_tuning.model_dump(exclude_none=True)
        ct = ClassifierTuning.model_validate({**ct.model_dump(), **overrides})
    return ct


@dataclass(frozen=True)
class RunDef:
    index: int
    name: str
    shots: int
    seed: int
    variant: str | None
    synthetic: tuple[SyntheticSource, ...]
    classifier_tuning: ClassifierTuning
    lr: float


def experiment_runs(spec: RecognitionExperimentSpec) -> list[RunDef]:
    """Expand the matrix (shots x seeds x variants) into runs, in a stable order."""
    variants = spec.matrix.variants or [None]
    runs = []
    for shots in spec.matrix.shots:
        for seed in spec.matrix.seeds:
            for variant in variants:
                ct = resolve_classifier_tuning(spec, variant)
                synthetic = spec.data.synthetic
                if variant is not None and variant.synthetic is not None:
                    synthetic = variant.synthetic
                lr = ct.lr if ct.lr is not None else (ZERO_SHOT_LR if shots == 0 else FEW_SHOT_LR)
                name = run_name(shots, seed, variant.name if variant else None)
                runs.append(
                    RunDef(
                        len(runs),
                        name,
                        shots,
                        seed,
                        variant.name if variant else None,
                        tuple(synthetic),
                        ct,
                        lr,
                    )
                )
    return runs


def experiment_hash(spec: RecognitionExperimentSpec) -> str:
    w = spec.wire()
    keys = ("labels", "backbone", "data", "method", "matrix")
    return digest({"v": HASH_VERSION, **{k: w[k] for k in keys}})


def run_hash(spec: RecognitionExperimentSpec, run: RunDef, inputs: list[DatasetInput]) -> str:
    w = spec.wire()
    return digest(
        {
            "v": HASH_VERSION,
            "labels": w["labels"],
            "backbone": w["backbone"],
            "data": {k: v for k, v in w["data"].items() if k != "synthetic"},
            "run": {
                "shots": run.shots,
                "seed": run.seed,
                "lr": run.lr,
                "ct": run.classifier_tuning.model_dump(),
            },
            "synthetic": [{"uri": i.uri, "digest": i.digest} for i in inputs],
        }
    )


def train_task(
    spec: RecognitionExperimentSpec,
    run: RunDef,
    inputs: list[DatasetInput],
    resource: ResourceRef,
    *,
    attempt: int = 1,
) -> TrainTask:
    """The task of one run; ``inputs`` are the run's synthetic datasets resolved to URIs and digests."""
    return TrainTask(
        resource=resource,
        output=storage_target(spec.output),
        spec_hash=run_hash(spec, run, inputs),
        attempt=attempt,
        shards=1,
        experiment=spec,
        labels=spec.labels,
        run=RunPlan(
            name=run.name,
            index=run.index,
            shots=run.shots,
            seed=run.seed,
            variant=run.variant,
            synthetic=inputs,
            classifier_tuning=run.classifier_tuning,
            lr=run.lr,
        ),
    )


# ------------------------------------------------------------------------------------ range strings


def format_ranges(indexes: set[int] | list[int]) -> str:
    """{0,1,2,3,5} -> '0-3,5' (the Job status format)."""
    values = sorted(set(indexes))
    parts: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        parts.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ",".join(parts)


def parse_ranges(text: str | None) -> set[int]:
    """'0-3,5' -> {0,1,2,3,5}; empty or None -> set()."""
    out: set[int] = set()
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out
