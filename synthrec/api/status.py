"""Status of both resources: conditions (the phase is derived from them in synthrec.api.conditions),
per-stage shard counts as range strings, image counts, run results and pinned datasets."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from synthrec.api.base import MAX_PINNED_DATASETS, MAX_RUNS, ApiModel

# ---------------------------------------------------------------------------------------------- status

ConditionType = Literal[
    "Accepted", "DatasetReady", "Queued", "Running", "Suspended", "Degraded", "Complete", "Failed"
]
Phase = Literal["Pending", "Queued", "Running", "Suspended", "Succeeded", "Failed"]


class Condition(ApiModel):
    """A metav1.Condition."""

    type: str = Field(max_length=316)
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = Field(default="", max_length=32768)
    last_transition_time: str = Field(json_schema_extra={"format": "date-time"})
    observed_generation: int | None = Field(default=None, ge=0)


class ShardProgress(ApiModel):
    """Counts and range strings (like Job status), never per-shard lists."""

    total: int = 0
    succeeded: int = 0
    failed: int = 0
    running: int = 0
    pending: int = 0
    succeeded_indexes: str = Field(default="", max_length=4096)
    failed_indexes: str = Field(default="", max_length=4096)


class StageStatus(ApiModel):
    state: Literal["Pending", "Running", "Succeeded", "Failed", "Skipped"] = "Pending"
    attempt: int = 0
    job: str | None = Field(default=None, max_length=253)
    shards: ShardProgress = Field(default_factory=ShardProgress)
    message: str | None = Field(default=None, max_length=1024)


class Progress(ApiModel):
    stage: str | None = Field(default=None, max_length=32)
    percent: int = Field(default=0, ge=0, le=100)
    summary: str = Field(default="", max_length=64, description="e.g. '40/64' shards or runs.")
    last_update_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})


class ImageCounts(ApiModel):
    generated: int = 0
    passed: int = Field(default=0, description="Passed the CLIP filter threshold.")
    kept: int = Field(default=0, description="Kept after CF selection and real filtering.")
    rejected: int = 0


class DatasetArtifacts(ApiModel):
    uri: str | None = Field(default=None, max_length=1024)
    prompts: str | None = Field(default=None, max_length=1024)
    manifest: str | None = Field(default=None, max_length=1024)
    manifest_digest: str | None = Field(default=None, max_length=128)
    report: str | None = Field(default=None, max_length=1024)


class StatusBase(ApiModel):
    observed_generation: int | None = None
    phase: Phase = "Pending"
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    start_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    completion_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    progress: Progress = Field(default_factory=Progress)
    spec_hash: str | None = Field(default=None, max_length=128)
    message: str | None = Field(default=None, max_length=4096)


class DatasetStages(ApiModel):
    prompts: StageStatus = Field(default_factory=StageStatus)
    generate: StageStatus = Field(default_factory=StageStatus)
    filter: StageStatus = Field(default_factory=StageStatus)
    reduce: StageStatus = Field(default_factory=StageStatus)


class SyntheticDatasetStatus(StatusBase):
    stages: DatasetStages = Field(default_factory=DatasetStages)
    images: ImageCounts = Field(default_factory=ImageCounts)
    artifacts: DatasetArtifacts = Field(default_factory=DatasetArtifacts)


class RunCounts(ApiModel):
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    running: int = 0
    pending: int = 0


class RunResult(ApiModel):
    """One run: a classifier-tuning run (shots, seed, variant) or a pre-training run (data size, init,
    objective, label space, seed) with its transfer results; percentages."""

    name: str = Field(max_length=253)
    shots: int | None = None
    seed: int
    variant: str | None = Field(default=None, max_length=63)
    method: str | None = Field(
        default=None, max_length=63, description="classifier-tuning, zero-shot, tip-adapter(-f) or coop."
    )
    state: Literal["Pending", "Running", "Succeeded", "Failed"] = "Pending"
    message: str | None = Field(
        default=None,
        max_length=1024,
        description="Why a Failed run failed: the Job's reason and its last pod's error.",
    )
    top1: float | None = Field(
        default=None,
        description="Test top-1 of the model the run's selection picks (pre-training: of the fine-tuned "
        "backbone, or the linear probe).",
    )
    top1_last: float | None = Field(default=None, description="Test top-1 of the last epoch's model.")
    top1_best_validation: float | None = Field(
        default=None, description="Test top-1 of the best epoch on the run's validation set, if it has one."
    )
    zero_shot_top1: float | None = None
    metrics: str | None = Field(
        default=None, max_length=1024, description="URI of the run's metrics.json (pre-training: its folder)."
    )
    # pre-training (method.pretrain): the cell of the matrix, the stage it is at, the transfer table
    objective: str | None = Field(default=None, max_length=32)
    label_space: str | None = Field(default=None, max_length=63)
    data_size: int | None = Field(default=None, description="Synthetic images (unset: all; 0: none).")
    init: str | None = Field(default=None, max_length=1024)
    stage: str | None = Field(default=None, max_length=32, description="pretrain or transfer.")
    pretrain_steps: int | None = Field(default=None, description="Optimizer steps of the pre-training.")
    pretrain_loss: float | None = Field(default=None, description="The pre-training's last logged loss.")
    card: str | None = Field(
        default=None, max_length=1024, description="URI of the pre-trained backbone's card.json."
    )
    classification_top1: float | None = None
    linear_probe_top1: float | None = None
    ap50: float | None = Field(default=None, description="VOC07 11-point AP50 of the detection transfer.")


class BestRun(ApiModel):
    name: str = Field(max_length=253)
    top1: float


class PinnedDataset(ApiModel):
    name: str | None = Field(default=None, max_length=253)
    uri: str = Field(max_length=1024)
    digest: str = Field(max_length=128, description="sha256 of the dataset's manifest.json, pinned at start.")


class ExperimentArtifacts(ApiModel):
    uri: str | None = Field(default=None, max_length=1024)
    summary: str | None = Field(default=None, max_length=1024)
    report: str | None = Field(default=None, max_length=1024)


class RecognitionExperimentStatus(StatusBase):
    runs: RunCounts = Field(default_factory=RunCounts)
    results: list[RunResult] = Field(
        default_factory=list,
        max_length=MAX_RUNS,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    best: BestRun | None = None
    datasets: list[PinnedDataset] = Field(default_factory=list, max_length=MAX_PINNED_DATASETS)
    artifacts: ExperimentArtifacts = Field(default_factory=ExperimentArtifacts)
