"""The termination summary of each stage: one line of JSON a worker writes when it ends (≤ 4 KiB, the
kubelet's limit for ``/dev/termination-log``), which the operator folds into status and the local runner
shows. One model per stage; a failed worker writes a :class:`FailureSummary` instead.

Workers build these models; readers call :func:`parse_summary` and get a model (or None for a message that
is not ours). Counts are required and survive the 4 KiB trimming; URIs are optional (a summary trimmed to
its numbers still parses, and readers fall back to the artifact layout).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

SUMMARY_VERSION = 1
TERMINATION_LOG_LIMIT = 4096


class Summary(BaseModel):
    """What every summary carries."""

    # A newer worker's extra fields are no reason to lose its counts.
    model_config = ConfigDict(extra="ignore")

    version: Literal[1] = SUMMARY_VERSION
    stage: str
    shard: int | None = None
    ok: bool = True
    seconds: float | None = None  # wall time of the whole process, written by the worker runtime
    skipped: bool = False  # the stage found its own commit and did nothing


class FailureSummary(Summary):
    ok: Literal[False] = False
    error: Literal["retryable", "config", "data"]
    message: str = ""


class PromptsSummary(Summary):
    stage: Literal["prompts"] = "prompts"
    prompts: int  # rows of prompts.jsonl
    classes: int
    images: int  # images wanted in total
    strategy: str | None = None
    filled: int = 0  # Language Enhancement sentences filled in deterministically
    filled_classes: int = 0
    uri: str | None = None
    models_mirrored: int = 0  # models pinned and copied once for the dataset's pods (spec.modelMirror)
    seconds_mirror: float | None = None


class GenerateSummary(Summary):
    stage: Literal["generate"] = "generate"
    images: int  # images in the shard
    tar: str | None = None
    sha256: str | None = None
    size: int | None = None
    device: str | None = None
    dtype: str | None = None
    batch_size: int | None = None
    batch_size_source: Literal["spec", "searched", "stored"] | None = None
    compile_cache: Literal["loaded", "stored", "unchanged"] | None = None  # with generator.compile
    seconds_load: float | None = None  # the model resolved (seconds_fetch of it) and loaded
    seconds_fetch: float | None = None
    seconds_startup: float | None = None  # stage start to the first batch's images: what a pod waits
    seconds_model: float = 0.0
    seconds_generate: float | None = None
    seconds_upload: float | None = None
    seconds_total: float | None = None
    seconds_writer_wait: float | None = None
    model_busy: float | None = None  # share of the generate time the model was busy
    images_per_s: float | None = None
    steady_images_per_s: float | None = None  # after the first batch (which pays warm-up and compile)
    real_skipped: int = 0  # unreadable real shots passed over (Real Guidance)


class FilterSummary(Summary):
    stage: Literal["filter"] = "filter"
    images: int = 0  # images scored (decodable)
    corrupt: int = 0
    features: str | None = None
    reason: str | None = None  # why nothing was done (filter disabled)


class ReduceSummary(Summary):
    stage: Literal["reduce"] = "reduce"
    generated: int
    passed: int
    kept: int
    rejected: int
    manifest: str | None = None  # URI of manifest.json
    digest: str | None = None  # its sha256: what experiments pin


class TrainSummary(Summary):
    stage: Literal["train"] = "train"
    run: str
    method: str | None = None
    top1: float | None
    top1_last: float | None = None
    top1_best_validation: float | None = None
    zero_shot_top1: float | None
    metrics: str | None = None  # URI of runs/<run>/metrics.json


class PretrainSummary(Summary):
    """A pre-training run (all ranks of its torchrun group; rank 0 writes the summary)."""

    stage: Literal["pretrain"] = "pretrain"
    run: str
    steps: int
    loss: float | None = None  # the last point of the loss curve
    images_per_s: float | None = None
    world_size: int | None = None
    card: str | None = None  # URI of runs/<run>/pretrain/card.json


class TransferSummary(Summary):
    """A run's downstream evaluations (percentages): what status shows in the transfer table."""

    stage: Literal["transfer"] = "transfer"
    run: str
    classification_top1: float | None = None
    linear_probe_top1: float | None = None
    ap50: float | None = None  # COCO-style all-point AP at IoU 0.5
    ap50_voc07: float | None = None  # the VOC07 11-point AP50 (Detectron2's VOC evaluator)
    metrics: str | None = None  # URI of runs/<run>/transfer/


class CleanupSummary(Summary):
    """What deleting a resource's artifacts did (``spec.output.onDelete: Delete``)."""

    stage: Literal["cleanup"] = "cleanup"
    deleted: int  # objects the resource wrote, deleted now
    kept: int  # other objects under its output URI, which synthrec did not write for it: left alone
    ledgers: int  # ledgers of written keys read (and deleted last)


StageSummary = (
    PromptsSummary
    | GenerateSummary
    | FilterSummary
    | ReduceSummary
    | TrainSummary
    | PretrainSummary
    | TransferSummary
    | CleanupSummary
)
_BY_STAGE: dict[str, type[Summary]] = {
    "prompts": PromptsSummary,
    "generate": GenerateSummary,
    "filter": FilterSummary,
    "reduce": ReduceSummary,
    "train": TrainSummary,
    "pretrain": PretrainSummary,
    "transfer": TransferSummary,
    "cleanup": CleanupSummary,
}


def summary_line(summary: Summary) -> str:
    """One line of compact JSON that fits the kubelet's 4 KiB termination-message limit.

    Long string values are shortened first; counts and URIs survive.
    """
    fields = summary.model_dump(mode="json", exclude_none=True)
    line = json.dumps(fields, separators=(",", ":"), sort_keys=True)
    if len(line.encode()) <= TERMINATION_LOG_LIMIT:
        return line
    trimmed = {k: (v[:200] + "…" if isinstance(v, str) and len(v) > 200 else v) for k, v in fields.items()}
    line = json.dumps(trimmed, separators=(",", ":"), sort_keys=True)
    if len(line.encode()) <= TERMINATION_LOG_LIMIT:
        return line
    keep = {
        k: v
        for k, v in trimmed.items()
        if isinstance(v, int | float | bool) or k in ("stage", "shard", "error")
    }
    return json.dumps(keep, separators=(",", ":"), sort_keys=True)[:TERMINATION_LOG_LIMIT]


def parse_summary(message: str | None) -> StageSummary | FailureSummary | None:
    """A worker's termination message as its model; None when it is missing or not ours."""
    if not message:
        return None
    try:
        raw: Any = json.loads(message.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    if not isinstance(raw, dict):
        return None
    model = FailureSummary if raw.get("ok") is False else _BY_STAGE.get(str(raw.get("stage")))
    if model is None:
        return None
    try:
        return model.model_validate(raw)  # type: ignore[return-value]
    except ValidationError:
        return None
