"""The task files of the ``pretrain`` and ``transfer`` stages (the paper's third study, method spec §3).

Phase 1 keeps these models here, next to the workers that read them; the RecognitionExperiment API will
render them (phase 2). Sub-blocks are API models (camelCase on the wire, unknown fields rejected), so the
same classes can become the API's ``method.pretrain`` block. ``None`` in a recipe field means "the standard
recipe's value" (``synthrec.workers.pretrain.recipes``); the resolved values are written to the card.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from synthrec.api import ApiModel, LabelSpace, RealData
from synthrec.plan.tasks import _TaskBase
from synthrec.storage.uris import URIError, parse_model_ref, parse_storage_uri

Objective = Literal["supervised", "moco-v2"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]
ImageSelection = Literal["kept", "all"]

_RUN_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$")
TIMM_PREFIX = "timm"

# PASCAL VOC's 20 classes in the devkit's order (class index 1..20 of the detector; 0 is background).
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


def check_weights_ref(value: str) -> str:
    """Check a weights reference: ``scratch``; ``timm`` (the backbone's default pretrained tag) or
    ``timm:<tag>`` (e.g. ``timm:tv_in1k``); ``hf://org/name[@rev]`` (a timm model repository); ``s3://``
    or ``file://`` (a weights file or a folder holding one)."""
    if value == "scratch" or value == TIMM_PREFIX:
        return value
    if value.startswith(TIMM_PREFIX + ":"):
        tag = value[len(TIMM_PREFIX) + 1 :]
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", tag):
            raise ValueError(
                f"{value!r}: a timm pretrained tag is letters, digits, '_', '.', '-' (timm:in1k)"
            )
        return value
    if not value.startswith(("hf://", "s3://", "file://")):
        raise ValueError(
            f"{value!r}: use scratch, timm, timm:<tag>, hf://org/name[@revision], s3://... or file:///..."
        )
    try:
        parse_model_ref(value)
    except URIError as exc:
        raise ValueError(str(exc)) from None
    return value


def _check_uri(value: str) -> str:
    try:
        parse_storage_uri(value, allow_tiny=False)
    except URIError as exc:
        raise ValueError(str(exc)) from None
    return value


# ----------------------------------------------------------------------------------------- pre-training


class SyntheticSource(ApiModel):
    """A committed SyntheticDataset (its output folder), pinned to the sha256 of its manifest.json."""

    uri: str = Field(max_length=1024, description="The dataset's output folder (s3://... or file:///...).")
    name: str | None = Field(default=None, max_length=253)
    digest: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$", description="sha256 of manifest.json (None: not pinned)."
    )
    endpoint: str | None = None
    region: str | None = None

    _v_uri = field_validator("uri")(lambda v: _check_uri(v))


class RealMix(ApiModel):
    """Real images mixed into every reader's stream at a fixed fraction (WebDataset shards with ``cls`` or
    ``json`` labels; string labels are matched to the label space like real data elsewhere)."""

    data: RealData
    fraction: float = Field(gt=0, lt=1, description="Share of each epoch's samples drawn from real data.")

    @field_validator("data")
    @classmethod
    def _webdataset(cls, v: RealData) -> RealData:
        if v.format != "webdataset":
            raise ValueError(
                "data.real.data.format must be webdataset: pre-training streams shards (write the real "
                "images as WebDataset tars, e.g. with webdataset's ShardWriter)"
            )
        return v


class PretrainData(ApiModel):
    synthetic: list[SyntheticSource] = Field(min_length=1, max_length=16)
    images: ImageSelection = Field(
        default="kept", description="kept: the CLIP-filtered set; all: every decodable generated image."
    )
    size: int | None = Field(
        default=None,
        ge=1,
        description="Use exactly this many images of the selection (e.g. 1.2M of 3.6M), keeping each "
        "class's share; chosen deterministically from cap_seed. None: all of the selection.",
    )
    cap_seed: int = Field(default=0, ge=0, le=2**31 - 1)
    real: RealMix | None = None
    image_size: int = Field(default=224, ge=16, le=1024)
    shuffle_buffer: int = Field(default=5000, ge=1, le=1_000_000, description="Samples per loader worker.")
    loader_workers: int = Field(default=8, ge=0, le=64, description="DataLoader workers per process.")
    prefetch_factor: int = Field(default=4, ge=1, le=64, description="Batches in flight per loader worker.")


class OptimizerSettings(ApiModel):
    """Overrides of the recipe's optimiser and schedule; None keeps the recipe's value."""

    name: Literal["sgd", "adamw"] | None = None
    lr: float | None = Field(
        default=None, gt=0, description="Absolute learning rate (default: recipe base lr x batch / ref)."
    )
    momentum: float | None = Field(default=None, ge=0, lt=1)
    weight_decay: float | None = Field(default=None, ge=0)
    warmup_epochs: float | None = Field(default=None, ge=0)
    min_lr: float | None = Field(default=None, ge=0)
    schedule_per: Literal["epoch", "step"] | None = Field(
        default=None, description="How often the cosine schedule moves (the official codebases: epoch)."
    )


class SupervisedSettings(ApiModel):
    """Overrides of the supervised recipe's regularisation; None keeps the recipe's value."""

    label_smoothing: float | None = Field(default=None, ge=0, lt=1)
    mixup: float | None = Field(default=None, ge=0, description="Mixup alpha (0: off).")
    cutmix: float | None = Field(default=None, ge=0, description="CutMix alpha (0: off).")
    randaugment: bool | None = None
    random_erasing: float | None = Field(default=None, ge=0, le=1)
    drop_path: float | None = Field(default=None, ge=0, lt=1)


class MocoSettings(ApiModel):
    """MoCo v2 (Chen et al. 2020; the official defaults)."""

    dim: int = Field(default=128, ge=8, le=4096)
    queue: int = Field(default=65536, ge=1, le=1 << 22, description="Negative keys K.")
    momentum: float = Field(default=0.999, ge=0, lt=1, description="Key encoder momentum m.")
    temperature: float = Field(default=0.2, gt=0, le=10)
    mlp: bool = True
    shuffle_bn: bool = Field(default=True, description="Shuffle the key batch across processes (DDP).")


class Checkpointing(ApiModel):
    every_minutes: float = Field(default=10.0, gt=0, description="Also saved on SIGTERM and at the end.")
    keep: int = Field(default=2, ge=1, le=100, description="Checkpoints kept besides the final one.")


class Distributed(ApiModel):
    """How torchrun is started. Locally: one node, one process per visible GPU (one on CPU). On a cluster
    the operator fills ``job`` and ``service``: one Indexed Job of ``nnodes`` pods plus a headless Service,
    rendezvous on ``<job>-0.<service>:<port>``."""

    nnodes: int = Field(default=1, ge=1, le=1024)
    nproc_per_node: int | None = Field(default=None, ge=1, le=64, description="None: GPUs, or 1 on CPU.")
    job: str | None = Field(default=None, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    service: str | None = Field(default=None, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    port: int = Field(default=29400, ge=1024, le=65535)
    max_restarts: int | None = Field(
        default=None,
        ge=0,
        le=100,
        description="torchrun's restarts of the whole group. None: 0 on one node (the executor retries the "
        "stage, which resumes from its checkpoint), 3 on several nodes.",
    )
    backend: Literal["auto", "nccl", "gloo"] = "auto"

    @model_validator(mode="after")
    def _cluster(self) -> Distributed:
        if self.nnodes > 1 and not (self.job and self.service):
            raise ValueError(
                "distributed.nnodes > 1 needs job and service (index 0's hostname is the rendezvous)"
            )
        return self


class _DistributedTask(_TaskBase):
    run: str = Field(max_length=63, description="Run name: its artifacts live under runs/<run>/.")
    precision: Precision = Field(default="auto", description="auto: bf16 on GPU, fp32 on CPU.")
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    distributed: Distributed = Field(default_factory=Distributed)
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
    stage: Literal["pretrain"] = "pretrain"
    objective: Objective
    backbone: str = Field(max_length=200, description="A timm model name (resnet50, deit_small_patch16_224).")
    init: str = Field(default="scratch", max_length=1024, description="scratch or a weights reference.")
    data: PretrainData
    epochs: int | None = Field(default=None, ge=1, le=10_000, description="None: the recipe's epochs.")
    max_steps: int | None = Field(default=None, ge=1, description="Stop after this many steps (a budget).")
    batch_size: int = Field(default=256, ge=1, le=1 << 20, description="Global batch, over all processes.")
    optimizer: OptimizerSettings = Field(default_factory=OptimizerSettings)
    supervised: SupervisedSettings = Field(default_factory=SupervisedSettings)
    moco: MocoSettings = Field(default_factory=MocoSettings)
    log_every: int = Field(default=10, ge=1, description="Steps between points of the loss curve.")

    _v_init = field_validator("init")(lambda v: check_weights_ref(v))

    @model_validator(mode="after")
    def _combinations(self) -> PretrainTask:
        d = self.distributed
        problem = batch_problem(self, d.nnodes, d.nproc_per_node)
        if problem:
            raise ValueError(problem)
        return self


def batch_problem(task: PretrainTask, nnodes: int, nproc_per_node: int | None) -> str | None:
    """What is wrong with the global batch for this world (None: nothing); checked when the task is
    validated (if the processes per node are given) and again by the ranks (when they are counted)."""
    if nproc_per_node is not None and task.batch_size % (nnodes * nproc_per_node):
        return (
            f"batch_size {task.batch_size} is not divisible by the world size {nnodes * nproc_per_node} "
            f"(distributed.nnodes {nnodes} x nproc_per_node {nproc_per_node})"
        )
    if task.objective == "moco-v2" and task.moco.queue % task.batch_size:
        return (
            f"moco.queue {task.moco.queue} must be a multiple of batch_size {task.batch_size}: each step "
            "replaces one global batch of keys in the queue (as the official code asserts)"
        )
    return None


# --------------------------------------------------------------------------------------------- transfer


class PretrainedSource(ApiModel):
    """What to transfer: a pre-training run's output (its card says the backbone), or a backbone with an
    initialisation for the rows without synthetic pre-training ("(None)" in the paper's tables)."""

    pretrain: str | None = Field(
        default=None, max_length=1024, description="A pretrain run's folder: runs/<run>/pretrain/."
    )
    backbone: str | None = Field(default=None, max_length=200)
    init: str = Field(default="scratch", max_length=1024)

    _v_init = field_validator("init")(lambda v: check_weights_ref(v))

    @model_validator(mode="after")
    def _one(self) -> PretrainedSource:
        if (self.pretrain is None) == (self.backbone is None):
            raise ValueError("source: set exactly one of pretrain (a run's folder) or backbone (+ init)")
        if self.pretrain is not None:
            _check_uri(self.pretrain)
            if self.init != "scratch":
                raise ValueError(
                    "source.init applies to source.backbone; a pretrain folder has its own weights"
                )
        return self


class ClassificationTransfer(ApiModel):
    """Full fine-tuning on a labelled set (the paper: CIFAR-100 top-1). Defaults: SGD, momentum 0.9,
    lr 0.01 x batch/768, wd 1e-4, cosine (the DeiT authors' CIFAR fine-tuning answer, deit#45; they ran
    1000 epochs at 224 px, the paper's exact settings are unknown)."""

    labels: LabelSpace
    train: RealData
    test: RealData
    epochs: int = Field(default=100, ge=1, le=10_000)
    batch_size: int = Field(default=768, ge=1, le=1 << 16)
    lr: float | None = Field(default=None, gt=0, description="Default 0.01 x batch_size / 768.")
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=1e-4, ge=0)
    warmup_epochs: float = Field(default=0, ge=0)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    image_size: int = Field(default=224, ge=16, le=1024)
    loader_workers: int = Field(default=8, ge=0, le=64)


class LinearProbe(ApiModel):
    """A linear classifier on the frozen backbone (the MoCo protocol's optimiser: SGD lr 30, momentum 0.9,
    wd 0, x0.1 at 60 and 80 of 100 epochs; trained here on cached centre-crop features, not on augmented
    crops, so it costs one pass of the backbone)."""

    labels: LabelSpace
    train: RealData
    test: RealData
    epochs: int = Field(default=100, ge=1, le=10_000)
    batch_size: int = Field(default=256, ge=1, le=1 << 16)
    lr: float = Field(default=30.0, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    milestones: list[float] = Field(default_factory=lambda: [0.6, 0.8], description="Fractions of epochs.")
    image_size: int = Field(default=224, ge=16, le=1024)
    loader_workers: int = Field(default=8, ge=0, le=64)


class VocData(ApiModel):
    """A PASCAL VOC folder: Annotations/<id>.xml, JPEGImages/<id>.jpg, ImageSets/Main/<split>.txt."""

    uri: str = Field(max_length=1024)
    split: str = Field(default="trainval", pattern=r"^[A-Za-z0-9_.\-]{1,64}$")

    _v_uri = field_validator("uri")(lambda v: _check_uri(v))


class DetectionTransfer(ApiModel):
    """torchvision Faster R-CNN with an FPN on the pre-trained backbone, the MoCo detection protocol's
    solver (batch 16, lr 0.02, 24k iterations, x0.1 at 18k and 22k, 100 warmup iterations, momentum 0.9,
    wd 1e-4, train min size 480-800 step 32, test 800, flips). torchvision has no R50-C4, so the head
    differs from the paper's Detectron2 R50-C4: compare deltas within this pipeline."""

    train: list[VocData] = Field(min_length=1, max_length=8, description="e.g. VOC07 + VOC12 trainval.")
    test: VocData
    classes: list[str] = Field(default_factory=lambda: list(VOC_CLASSES), min_length=1, max_length=1000)
    iterations: int = Field(default=24000, ge=1)
    batch_size: int = Field(default=16, ge=1, le=1024)
    lr: float | None = Field(default=None, gt=0, description="Default 0.02 x batch_size / 16.")
    milestones: list[int] | None = Field(default=None, description="Default 0.75 and ~0.917 of iterations.")
    warmup_iterations: int = Field(default=100, ge=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=1e-4, ge=0)
    min_size_train: list[int] = Field(default_factory=lambda: list(range(480, 801, 32)), min_length=1)
    min_size_test: int = Field(default=800, ge=16)
    max_size: int = Field(default=1333, ge=16)
    norm: Literal["frozen", "sync", "train"] = Field(
        default="sync",
        description="Backbone BatchNorm: sync (SyncBN across processes, as the MoCo protocol), train "
        "(per process) or frozen (torchvision's default for pre-trained backbones).",
    )
    trainable_layers: int = Field(default=5, ge=0, le=5, description="Backbone stages tuned (5: all).")
    use_difficult: bool = Field(default=False, description="Train on objects marked difficult.")
    loader_workers: int = Field(default=4, ge=0, le=64)


class TransferTask(_DistributedTask):
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
