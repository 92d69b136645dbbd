"""Task JSON: what one worker stage needs, rendered by the planner (operator or local) and read by workers.

A task is self-contained (resolved spec, hashes, shard map, output location) and carries no secrets:
credentials come from the environment (Secrets in the cluster, the user's env locally).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from synthrec.api import (
    ClassifierTuning,
    CoOp,
    LabelSpace,
    MethodName,
    RealData,
    RecognitionExperimentSpec,
    SyntheticDatasetSpec,
    SyntheticSource,
    TipAdapter,
)
from synthrec.api.pretraining import (
    Checkpointing,
    ClassificationFineTuning,
    DetectionTransfer,
    LinearProbeSettings,
    MocoSettings,
    Objective,
    OptimizerSettings,
    Precision,
    PretrainData,
    SupervisedSettings,
    check_weights_ref,
)
from synthrec.storage.uris import URIError, parse_storage_uri

Stage = Literal["prompts", "generate", "filter", "reduce", "train", "pretrain", "transfer"]
DATASET_STAGES: tuple[Stage, ...] = ("prompts", "generate", "filter", "reduce")
SHARDED_STAGES: tuple[Stage, ...] = ("generate", "filter")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ResourceRef(_Model):
    kind: Literal["SyntheticDataset", "RecognitionExperiment"]
    name: str
    namespace: str | None = None
    uid: str | None = None


class StorageTarget(_Model):
    """Where the stage reads and writes; credentials come from the environment."""

    uri: str
    endpoint: str | None = None
    region: str | None = None


class _TaskBase(_Model):
    resource: ResourceRef
    output: StorageTarget
    spec_hash: str = Field(description="Hash of everything this stage's output depends on.")
    attempt: int = 1
    shards: int = Field(default=1, description="Total shards of the stage (not of this attempt).")
    shard_ids: list[int] | None = Field(
        default=None,
        description="This attempt's completion index -> shard id (None: identity). Retry attempts list "
        "only the shards without a commit marker.",
    )

    def shard_for_index(self, index: int) -> int:
        """Map a Job completion index (or local shard index) to the shard id it must produce."""
        if self.shard_ids is None:
            if not 0 <= index < self.shards:
                raise IndexError(f"completion index {index} is outside 0..{self.shards - 1}")
            return index
        if not 0 <= index < len(self.shard_ids):
            raise IndexError(
                f"completion index {index} is outside this attempt's {len(self.shard_ids)} shards"
            )
        return self.shard_ids[index]

    def attempt_size(self) -> int:
        return self.shards if self.shard_ids is None else len(self.shard_ids)


class _DatasetTask(_TaskBase):
    dataset: SyntheticDatasetSpec
    hashes: dict[str, str] = Field(
        description="Hashes of every dataset stage (prompts, generate, filter, reduce)."
    )


class PromptsTask(_DatasetTask):
    stage: Literal["prompts"] = "prompts"


class GenerateTask(_DatasetTask):
    stage: Literal["generate"] = "generate"


class FilterTask(_DatasetTask):
    stage: Literal["filter"] = "filter"


class ReduceTask(_DatasetTask):
    stage: Literal["reduce"] = "reduce"


class DatasetInput(_Model):
    """A synthetic dataset a run trains on, pinned to the digest of its manifest."""

    name: str | None = None
    uri: str
    digest: str | None = None
    endpoint: str | None = None
    region: str | None = None


class Run(_Model):
    """One run of a RecognitionExperiment, the one record of it: a cell of the matrix with every
    hyper-parameter resolved where the plan is made (synthrec.plan.experiment_runs)."""

    index: int
    name: str
    shots: int
    seed: int
    variant: str | None = None
    method: MethodName = "classifier-tuning"
    synthetic: list[SyntheticSource] = Field(
        default_factory=list,
        description="data.synthetic, or the variant's own list, with {shots} and {seed} filled in; empty for "
        "every method but classifier-tuning.",
    )
    classifier_tuning: ClassifierTuning = Field(
        description="method.classifierTuning with the variant's overrides and every default filled in (lr: "
        "2e-3 zero-shot, 1e-3 few-shot): what the optimiser gets, as it is."
    )
    tip_adapter: TipAdapter | None = Field(
        default=None,
        description="tip-adapter(-f) runs: method.tipAdapter with the variant's overrides and the dataset's "
        "official alpha, search grid and epochs filled in.",
    )
    coop: CoOp | None = Field(
        default=None,
        description="coop runs: method.coop with the variant's overrides and the epochs for the shots.",
    )

    def selection(self) -> str:
        """Which epoch's model the run reports: its method's ``selection`` (``last`` for the methods
        without epochs)."""
        if self.method == "classifier-tuning":
            return self.classifier_tuning.selection
        if self.method == "tip-adapter-f" and self.tip_adapter is not None:
            return self.tip_adapter.selection
        if self.method == "coop" and self.coop is not None:
            return self.coop.selection
        return "last"

    def settings(self) -> dict[str, object] | None:
        """The resolved settings of the run's method other than classifier-tuning (None for it)."""
        block = {"tip-adapter": self.tip_adapter, "tip-adapter-f": self.tip_adapter, "coop": self.coop}
        model = block.get(self.method)
        return model.model_dump(mode="json") if model is not None else None


class PretrainRun(_Model):
    """One run of a pre-training experiment: a cell of labelSpaces x objectives x inits x dataSizes x
    seeds (synthrec.plan.pretraining.pretrain_runs)."""

    index: int
    name: str
    objective: Objective
    label_space: str | None = Field(
        default=None, description="matrix.labelSpaces[].name; None: data.synthetic."
    )
    size: int | None = Field(description="Synthetic images (None: all of them; 0: no pre-training).")
    init: str
    seed: int
    synthetic: list[SyntheticSource] = Field(default_factory=list, description="What it pre-trains on.")


class TrainTask(_TaskBase):
    stage: Literal["train"] = "train"
    experiment: RecognitionExperimentSpec
    run: Run
    datasets: list[DatasetInput] = Field(
        default_factory=list,
        description="run.synthetic pinned: each source's URI and manifest digest, in the same order.",
    )


# ---------------------------------------------------------------------- pre-training and transfer

_RUN_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$")


class Placement(_Model):
    """How the stage's torchrun group is laid out. Locally: one node, one process per visible GPU (one on
    CPU). On a cluster: ``nnodes`` pods of one Indexed Job, ``nproc_per_node`` processes each, a c10d
    rendezvous on index 0 of the Job, whose address the operator gives the pods
    (``synthrec.contract.ENV_RENDEZVOUS``: ``<job>-0.<headless service>:<port>``)."""

    nnodes: int = Field(default=1, ge=1, le=1024)
    nproc_per_node: int | None = Field(default=None, ge=1, le=64, description="None: GPUs, or 1 on CPU.")
    max_restarts: int | None = Field(
        default=None,
        ge=0,
        le=100,
        description="None: 0 on one node, 3 on several (torchrun's group restarts).",
    )
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    shutdown_timeout: int = Field(
        default=120, ge=1, le=3600, description="Seconds torchrun gives the ranks after SIGTERM (checkpoint)."
    )


class PretrainTaskData(PretrainData):
    """method.pretrain.data with the run's datasets pinned and its size cap."""

    synthetic: list[DatasetInput] = Field(min_length=1, max_length=16)
    size: int | None = Field(default=None, ge=1, description="Images of the selection to use (None: all).")


class _DistributedTask(_TaskBase):
    run: str = Field(max_length=63, description="Run name: its artifacts live under runs/<run>/.")
    experiment: RecognitionExperimentSpec | None = Field(
        default=None, description="The spec as written, for the experiment's spec.json (None: a bare task)."
    )
    precision: Precision = "auto"
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    distributed: Placement = Field(default_factory=Placement)
    checkpoint: Checkpointing = Field(default_factory=Checkpointing)

    @field_validator("run")
    @classmethod
    def _run_name(cls, v: str) -> str:
        if not _RUN_NAME.match(v):
            raise ValueError(
                f"run {v!r}: lowercase letters, digits, '-' and '.', starting with a letter or digit"
            )
        return v


class PretrainTask(_DistributedTask):
    """One pre-training run (synthrec.workers.pretrain.pretrain); ``None`` recipe fields: the recipe's."""

    stage: Literal["pretrain"] = "pretrain"
    objective: Objective
    backbone: str = Field(max_length=200, description="A timm model name.")
    init: str = Field(default="scratch", max_length=1024, description="scratch or a weights reference.")
    data: PretrainTaskData
    epochs: int | None = Field(default=None, ge=1, le=10_000)
    max_steps: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=256, ge=1, le=1 << 20, description="Global batch, over all processes.")
    optimizer: OptimizerSettings = Field(default_factory=OptimizerSettings)
    supervised: SupervisedSettings = Field(default_factory=SupervisedSettings)
    moco: MocoSettings = Field(default_factory=MocoSettings)
    log_every: int = Field(default=10, ge=1)

    _v_init = field_validator("init")(lambda v: check_weights_ref(v))

    @model_validator(mode="after")
    def _combinations(self) -> PretrainTask:
        problem = batch_problem(self, self.distributed.nnodes, self.distributed.nproc_per_node)
        if problem:
            raise ValueError(problem)
        return self


def batch_problem(task: PretrainTask, nnodes: int, nproc_per_node: int | None) -> str | None:
    """What is wrong with the global batch for this world (None: nothing); checked when the task is
    validated (if the processes per node are given) and again by the ranks (when they are counted)."""
    if nproc_per_node is not None and task.batch_size % (nnodes * nproc_per_node):
        return (
            f"batch_size {task.batch_size} is not divisible by the world size {nnodes * nproc_per_node} "
            f"({nnodes} node(s) x {nproc_per_node} process(es))"
        )
    if task.objective == "moco-v2" and task.moco.queue % task.batch_size:
        return (
            f"moco.queue {task.moco.queue} must be a multiple of batch_size {task.batch_size}: each step "
            "replaces one global batch of keys in the queue (as the official code asserts)"
        )
    return None


class PretrainedSource(_Model):
    """What to transfer: a pre-training run's folder (its card names the backbone), or a backbone with an
    initialisation for the rows without synthetic pre-training ("(None)" in the paper's tables)."""

    pretrain: str | None = Field(default=None, max_length=1024, description="runs/<run>/pretrain/ of a run.")
    backbone: str | None = Field(default=None, max_length=200)
    init: str = Field(default="scratch", max_length=1024)

    _v_init = field_validator("init")(lambda v: check_weights_ref(v))

    @model_validator(mode="after")
    def _one(self) -> PretrainedSource:
        if (self.pretrain is None) == (self.backbone is None):
            raise ValueError("source: set exactly one of pretrain (a run's folder) or backbone (+ init)")
        if self.pretrain is not None:
            try:
                parse_storage_uri(self.pretrain, allow_tiny=False)
            except URIError as exc:
                raise ValueError(str(exc)) from None
            if self.init != "scratch":
                raise ValueError(
                    "source.init applies to source.backbone; a pretrain folder has its own weights"
                )
        return self


class ClassificationTransfer(ClassificationFineTuning):
    """Fine-tuning with its data: the experiment's labels, data.realTrain and data.test."""

    labels: LabelSpace
    train: RealData
    test: RealData


class LinearProbe(LinearProbeSettings):
    labels: LabelSpace
    train: RealData
    test: RealData


class TransferTask(_DistributedTask):
    """The downstream evaluations of one run (synthrec.workers.pretrain.transfer)."""

    stage: Literal["transfer"] = "transfer"
    source: PretrainedSource
    classification: ClassificationTransfer | None = None
    linear_probe: LinearProbe | None = None
    detection: DetectionTransfer | None = None

    @model_validator(mode="after")
    def _something(self) -> TransferTask:
        if not (self.classification or self.linear_probe or self.detection):
            raise ValueError("transfer needs at least one of classification, linear_probe or detection")
        return self


DistributedTask = PretrainTask | TransferTask


class CleanupTask(_TaskBase):
    """Delete what the resource wrote (``spec.output.onDelete: Delete``): the keys its ledgers list
    (synthrec.contract.written), run in the resource's namespace with that namespace's credentials."""

    stage: Literal["cleanup"] = "cleanup"
    spec_hash: str = Field(default="", description="Unused: a cleanup depends on no spec.")


def cleanup_task(resource: ResourceRef, output: StorageTarget) -> CleanupTask:
    return CleanupTask(resource=resource, output=output)


AnyTask = (
    PromptsTask
    | GenerateTask
    | FilterTask
    | ReduceTask
    | TrainTask
    | PretrainTask
    | TransferTask
    | CleanupTask
)
Task = Annotated[AnyTask, Field(discriminator="stage")]


class _TaskFile(_Model):
    task: Task


def dump_task(task: AnyTask) -> str:
    return json.dumps(task.model_dump(mode="json", by_alias=False), indent=1, sort_keys=True)


def load_task(source: str | Path) -> AnyTask:
    """Read a task file; raises ValueError with the path on anything unreadable or invalid."""
    path = Path(source)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read task file {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"task file {path} is not JSON: {exc}") from None
    return _TaskFile.model_validate({"task": raw}).task
