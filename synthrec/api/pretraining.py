"""``method.pretrain`` of a RecognitionExperiment: the paper's third study (method spec §3, Tables 8-11).

A timm backbone is pre-trained on synthetic shards (supervised, or self-supervised with MoCo v2),
distributed with torchrun, then evaluated downstream (``transfer``: full fine-tuning and/or a linear probe
on ``data.realTrain`` -> ``data.test`` in ``labels``, and/or Faster R-CNN detection on VOC). The matrix
expands over data size x initialisation x objective x label space (``matrix.dataSizes``, ``inits``,
``objectives``, ``labelSpaces``), like the few-shot matrix.

``None`` in a recipe field means "the standard recipe's value" (MoCo v2's official defaults; the DeiT
recipe for transformers; the torchvision ResNet recipe otherwise), resolved by the worker and written to
the run's card. Checks that need the backbone's code (a ViT for detection) are repeated by the worker.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from synthrec.api.base import ApiModel, Rule, VocUri, _check_storage_uri
from synthrec.api.common import RealData
from synthrec.presets import VOC_CLASSES  # the detector's class order (index 1..20; 0 is background)
from synthrec.storage.uris import URIError, parse_model_ref

Objective = Literal["supervised", "moco-v2"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]
ImageSelection = Literal["kept", "all"]

TIMM_PREFIX = "timm"
SCRATCH = "scratch"
WEIGHTS_REF_PATTERN = r"^(scratch|timm(:[A-Za-z0-9_.\-]+)?|hf://.+|s3://.+|file:///.+)$"
# timm families that give one feature map at one stride: the detector's FPN cannot take them.
PLAIN_VIT_PATTERN = r"^(vit_|deit_|deit3_|beit|eva|cait_|xcit_|flexivit|test_vit)"
TIMM_NAME_PATTERN = r"^[a-z0-9_.]+$"


def check_weights_ref(value: str) -> str:
    """A weights reference: ``scratch``; ``timm`` (the backbone's default pretrained tag) or
    ``timm:<tag>`` (e.g. ``timm:tv_in1k``); ``hf://org/name[@rev]`` (a timm model repository); ``s3://``
    or ``file://`` (a weights file or a folder holding one)."""
    if value in (SCRATCH, TIMM_PREFIX):
        return value
    if value.startswith(TIMM_PREFIX + ":"):
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", value[len(TIMM_PREFIX) + 1 :]):
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


WeightsRef = str  # validated by check_weights_ref (and WEIGHTS_REF_PATTERN in the CRD)


def _weights_field(default: str, description: str) -> object:
    return Field(default=default, max_length=1024, pattern=WEIGHTS_REF_PATTERN, description=description)


# ------------------------------------------------------------------------------------- pre-training


class RealMix(ApiModel):
    """Real images mixed into every reader's stream at a fixed fraction (WebDataset shards with ``cls`` or
    ``json`` labels, matched to the label space like real data elsewhere)."""

    data: RealData
    fraction: float = Field(gt=0, lt=1, description="Share of each epoch's samples drawn from real data.")

    @field_validator("data")
    @classmethod
    def _webdataset(cls, v: RealData) -> RealData:
        if v.format != "webdataset":
            raise ValueError(
                "method.pretrain.data.real.data.format must be webdataset: pre-training streams shards "
                "(write the real images as WebDataset tars, e.g. with webdataset's ShardWriter)"
            )
        return v


class PretrainData(ApiModel):
    """How the synthetic shards are read (the datasets themselves: data.synthetic or matrix.labelSpaces)."""

    images: ImageSelection = Field(
        default="all",
        description="all: every decodable generated image (the paper's pre-training data: LE prompts, no "
        "CLIP filter); kept: the CLIP-filtered set.",
    )
    cap_seed: int = Field(
        default=0, ge=0, le=2**31 - 1, description="Which images a size cap keeps (matrix.dataSizes)."
    )
    real: RealMix | None = None
    image_size: int = Field(default=224, ge=16, le=1024)
    shuffle_buffer: int = Field(default=5000, ge=1, le=1_000_000, description="Samples per loader worker.")
    loader_workers: int = Field(default=8, ge=0, le=64, description="DataLoader workers per process.")
    prefetch_factor: int = Field(default=4, ge=1, le=64, description="Batches in flight per loader worker.")


class OptimizerSettings(ApiModel):
    """Overrides of the recipe's optimiser and schedule; unset keeps the recipe's value."""

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
    """Overrides of the supervised recipe's regularisation; unset keeps the recipe's value."""

    label_smoothing: float | None = Field(default=None, ge=0, lt=1)
    mixup: float | None = Field(default=None, ge=0, description="Mixup alpha (0: off).")
    cutmix: float | None = Field(default=None, ge=0, description="CutMix alpha (0: off).")
    randaugment: bool | None = None
    random_erasing: float | None = Field(default=None, ge=0, le=1)
    drop_path: float | None = Field(default=None, ge=0, lt=1)
    repeated_augmentation: int | None = Field(
        default=None,
        ge=1,
        le=16,
        description="Copies of each image per batch, each augmented apart; an epoch keeps its steps, so it "
        "reads 1/n of the images (DeiT's RASampler: 3 for transformers; 1: off).",
    )


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
    """torchrun across nodes: on a cluster one Indexed Job of ``nodes`` pods (``resources.gpus`` processes
    each, one on CPU pods) plus a headless Service; locally one node, one process per visible GPU."""

    nodes: int = Field(default=1, ge=1, le=256, description="Pods of the stage, admitted together (Kueue).")
    max_restarts: int | None = Field(
        default=None,
        ge=0,
        le=100,
        description="torchrun's restarts of the whole group. Default: 0 on one node (the executor retries "
        "the run, which resumes from its checkpoint), 3 on several nodes.",
    )
    port: int = Field(default=29400, ge=1024, le=65535, description="The c10d rendezvous port.")
    backend: Literal["auto", "nccl", "gloo"] = Field(default="auto", description="auto: NCCL on GPU.")
    termination_grace_seconds: int = Field(
        default=300,
        ge=30,
        le=3600,
        description="The pods' grace period: time for the checkpoint written on SIGTERM (eviction, "
        "preemption) before the kubelet kills the pod.",
    )


# ----------------------------------------------------------------------------------------- transfer


class ClassificationFineTuning(ApiModel):
    """Full fine-tuning on data.realTrain, top-1 on data.test (the paper: CIFAR-100). Defaults: SGD,
    momentum 0.9, lr 0.01 x batch/768, wd 1e-4, cosine (the DeiT authors' CIFAR answer, deit#45; they ran
    1000 epochs at 224 px; the paper's exact settings are unknown)."""

    epochs: int = Field(default=100, ge=1, le=10_000)
    batch_size: int = Field(default=768, ge=1, le=1 << 16)
    lr: float | None = Field(default=None, gt=0, description="Default 0.01 x batchSize / 768.")
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=1e-4, ge=0)
    warmup_epochs: float = Field(default=0, ge=0)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    image_size: int = Field(default=224, ge=16, le=1024)
    loader_workers: int = Field(default=8, ge=0, le=64)


class LinearProbeSettings(ApiModel):
    """A linear classifier on the frozen backbone (MoCo's main_lincls optimiser: SGD lr 30, momentum 0.9,
    wd 0, x0.1 at 60 and 80 of 100 epochs; trained on cached centre-crop features)."""

    epochs: int = Field(default=100, ge=1, le=10_000)
    batch_size: int = Field(default=256, ge=1, le=1 << 16)
    lr: float = Field(default=30.0, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    milestones: list[float] = Field(
        default_factory=lambda: [0.6, 0.8], max_length=8, description="Fractions of epochs."
    )
    image_size: int = Field(default=224, ge=16, le=1024)
    loader_workers: int = Field(default=8, ge=0, le=64)


class VocData(ApiModel):
    """A PASCAL VOC folder: Annotations/<id>.xml, JPEGImages/<id>.jpg, ImageSets/Main/<split>.txt."""

    uri: VocUri
    split: str = Field(default="trainval", pattern=r"^[A-Za-z0-9_.\-]{1,64}$")

    _v_uri = field_validator("uri")(lambda v: _check_storage_uri(v, tiny_set="voc"))


class DetectionTransfer(ApiModel):
    """torchvision Faster R-CNN with an FPN on the pre-trained backbone, the MoCo detection protocol's
    solver (batch 16, lr 0.02, 24k iterations, x0.1 at 18k and 22k, 100 warmup iterations, momentum 0.9,
    wd 1e-4, train min size 480-800 step 32, test 800, flips). torchvision has no R50-C4, so the head
    differs from the paper's Detectron2 R50-C4: compare deltas within this pipeline."""

    train: list[VocData] = Field(min_length=1, max_length=8, description="e.g. VOC07 + VOC12 trainval.")
    test: VocData
    classes: list[str] = Field(default_factory=lambda: list(VOC_CLASSES), min_length=1, max_length=1000)
    iterations: int = Field(default=24000, ge=1, le=10_000_000)
    batch_size: int = Field(default=16, ge=1, le=1024)
    lr: float | None = Field(default=None, gt=0, description="Default 0.02 x batchSize / 16.")
    milestones: list[int] | None = Field(
        default=None, max_length=8, description="Default 0.75 and ~0.917 of iterations."
    )
    warmup_iterations: int = Field(default=100, ge=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=1e-4, ge=0)
    min_size_train: list[int] = Field(
        default_factory=lambda: list(range(480, 801, 32)), min_length=1, max_length=64
    )
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


class Transfer(ApiModel):
    """Downstream evaluations of each pre-trained backbone (and of the inits alone, dataSizes 0)."""

    __cel_rules__ = (
        Rule(
            "has(self.classification) || has(self.linearProbe) || has(self.detection)",
            "method.pretrain.transfer needs at least one of classification, linearProbe or detection",
        ),
    )

    classification: ClassificationFineTuning | None = None
    linear_probe: LinearProbeSettings | None = None
    detection: DetectionTransfer | None = None


# ------------------------------------------------------------------------------------- the method


class Pretrain(ApiModel):
    """Pre-training of a timm backbone on synthetic data, then transfer (``method.pretrain``)."""

    __cel_rules__ = (
        Rule(
            "self.objective != 'moco-v2' || self.moco.queue % self.batchSize == 0",
            "method.pretrain.moco.queue must be a multiple of method.pretrain.batchSize: each step replaces "
            "one global batch of keys in the queue (as the official code asserts)",
            field_path=".moco.queue",
        ),
        Rule(
            "!has(self.transfer) || !has(self.transfer.detection) || "
            f"!self.backbone.matches('{PLAIN_VIT_PATTERN}')",
            "method.pretrain.transfer.detection needs a hierarchical backbone (strides 4-32, e.g. resnet50 "
            "or convnext); a plain ViT/DeiT has one feature map at stride 16, which torchvision's Faster "
            "R-CNN with FPN cannot take: drop detection or use classification / linearProbe",
            field_path=".transfer.detection",
        ),
    )

    objective: Objective = Field(
        default="supervised", description="matrix.objectives overrides it (supervised | moco-v2)."
    )
    backbone: str = Field(
        default="resnet50",
        max_length=200,
        pattern=TIMM_NAME_PATTERN,
        description="A timm model name (resnet50, deit_small_patch16_224, vit_base_patch16_224).",
    )
    init: WeightsRef = _weights_field(  # type: ignore[assignment]
        SCRATCH,
        "Initial weights: scratch, timm (the backbone's default tag), timm:<tag> (timm:tv_in1k), "
        "hf://org/name[@rev], s3:// or file:// (a weights file or a folder); matrix.inits overrides it.",
    )
    data: PretrainData = Field(default_factory=PretrainData)
    epochs: int | None = Field(default=None, ge=1, le=10_000, description="Default: the recipe's.")
    max_steps: int | None = Field(default=None, ge=1, description="Stop after this many steps (a budget).")
    batch_size: int = Field(default=256, ge=1, le=1 << 20, description="Global batch over all processes.")
    optimizer: OptimizerSettings = Field(default_factory=OptimizerSettings)
    supervised: SupervisedSettings = Field(default_factory=SupervisedSettings)
    moco: MocoSettings = Field(default_factory=MocoSettings)
    precision: Precision = Field(default="auto", description="auto: bf16 on GPU, fp32 on CPU.")
    checkpoint: Checkpointing = Field(default_factory=Checkpointing)
    log_every: int = Field(default=10, ge=1, le=1_000_000, description="Steps between loss-curve points.")
    distributed: Distributed = Field(default_factory=Distributed)
    transfer: Transfer | None = None

    _v_init = field_validator("init")(lambda v: check_weights_ref(v))


def init_label(ref: str) -> str:
    """A short, stable name of an initialisation for run names: scratch, timm, tv-in1k, the file's stem."""
    if ref in (SCRATCH, TIMM_PREFIX):
        return ref
    if ref.startswith(TIMM_PREFIX + ":"):
        tail = ref[len(TIMM_PREFIX) + 1 :]
    else:
        tail = ref.split("@", 1)[0].rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    label = re.sub(r"[^a-z0-9]+", "-", tail.lower()).strip("-")
    return label[:20].strip("-") or "init"
