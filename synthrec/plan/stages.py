"""The stages of a SyntheticDataset: their chained spec hashes, shard counts and task JSON.

Nothing here does I/O. The operator turns the tasks into ConfigMaps and Jobs; the local executor runs
them as subprocesses. Both therefore run exactly the same stages with exactly the same task JSON.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from synthrec.api import SyntheticDatasetSpec
from synthrec.plan.tasks import (
    DATASET_STAGES,
    FilterTask,
    GenerateTask,
    PromptsTask,
    ReduceTask,
    ResourceRef,
    Stage,
    StorageTarget,
)

# Bump when a change in synthrec makes old artifacts unusable for the same spec. 2: generation at the
# pipeline's native size, Real Guidance's strength matched by signal level, the official CLIP Filter
# prompts and head names (issue 13): a spec written for 1 now makes other images, scores and heads.
HASH_VERSION = "2"
# The filter stage's own version (its hash only): 2 = features files of float16 logits (format 2) and
# images decoded at reduced size or on the GPU by default (filter.decode), so scores may move slightly.
FILTER_VERSION = "2"


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
            # only when set, so that every dataset made before the field keeps its hash
            **({"order": order} if (order := w["sharding"]["order"]) != "class" else {}),
        }
    )
    filt = digest({"generate": generate, "filter": w["filter"], "v": FILTER_VERSION})
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


def wanted_shards(stage: StageDef, generated: set[int] | frozenset[int]) -> frozenset[int]:
    """The shards a stage must produce: every generate shard, the filter stage only those ``generated``
    (committed by the generate stage), the single-pod stages shard 0."""
    if stage.stage == "generate":
        return frozenset(range(stage.shards))
    if stage.stage == "filter":
        return frozenset(generated)
    return frozenset({0})
