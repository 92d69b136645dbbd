"""The RecognitionExperiment spec: backbone, data, Classifier Tuning, the matrix of runs and execution."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from synthrec.api.base import (
    _DNS_LABEL,
    MAX_RESOURCE_NAME,
    MAX_RUNS,
    ApiModel,
    DnsLabel,
    OutputUri,
    Rule,
    _check_model_ref,
    _check_storage_uri,
)
from synthrec.api.common import (
    LabelSpace,
    ModelHub,
    Output,
    RealData,
    Resources,
    RunPolicy,
    Scheduling,
    _immutable,
)
from synthrec.api.pretraining import WEIGHTS_REF_PATTERN, Objective, Pretrain, check_weights_ref

# ----------------------------------------------------------------------------- RecognitionExperiment


class Backbone(ApiModel):
    """The recognition model: a CLIP image encoder from open_clip (paper: RN50 and ViT-B/16)."""

    model: str = Field(
        default="RN50", max_length=1024, description="open_clip name or model folder reference."
    )
    pretrained: str | None = Field(default="openai", max_length=128)

    _v_model = field_validator("model")(lambda v: _check_model_ref(v, allow_name=True))


class SyntheticSource(ApiModel):
    """Synthetic training data: a SyntheticDataset in the same namespace, or the output URI of one."""

    __cel_rules__ = (Rule("has(self.datasetRef) != has(self.uri)", "set exactly one of datasetRef or uri"),)

    dataset_ref: str | None = Field(
        default=None, max_length=MAX_RESOURCE_NAME, pattern=_DNS_LABEL, description="A SyntheticDataset name."
    )
    uri: OutputUri | None = None

    _v_uri = field_validator("uri")(lambda v: _check_storage_uri(v, allow_tiny=False))


class ExperimentData(ApiModel):
    synthetic: list[SyntheticSource] = Field(default_factory=list, max_length=16)
    real_train: RealData | None = Field(
        default=None, description="Real training images; M shots per class are sampled."
    )
    test: RealData | None = Field(
        default=None,
        description="Real test images: every run reports top-1 on them (classifier tuning needs them; "
        "pre-training's classification and linear-probe transfer evaluate on them).",
    )
    validation: RealData | None = Field(
        default=None, description="Real validation images; the only data a best epoch may be chosen on."
    )


class SoftTarget(ApiModel):
    """Soft-target cross-entropy (SCE): loss = weight * SCE + (1 - weight) * CE on synthetic data."""

    weight: float = Field(default=0.5, ge=0, le=1, description="Paper README: 0.5.")
    temperature: float = Field(
        default=2.0, gt=0, le=100, description="Paper README: 2 (on logits scaled by 100)."
    )


class ClassifierTuning(ApiModel):
    """Classifier Tuning (CT): frozen CLIP image encoder, text-initialised linear head, AdamW, cosine."""

    epochs: int = Field(default=30, ge=1, le=10_000, description="Paper README: 30.")
    lr: float | None = Field(
        default=None,
        gt=0,
        le=10,
        description="Default: 2e-3 for zero-shot, 1e-3 for few-shot runs (paper README).",
    )
    weight_decay: float = Field(default=0.1, ge=0, le=10, description="AdamW weight decay (paper: 0.1).")
    batch_size_real: int = Field(default=32, ge=1, le=65_536, description="Real batch per step (paper: 32).")
    batch_size_synthetic: int = Field(
        default=512, ge=1, le=65_536, description="Synthetic batch per step (paper: 512)."
    )
    warmup_steps: int = Field(default=0, ge=0, le=1_000_000, description="Linear warmup (paper README: 0).")
    grad_clip: float = Field(default=1.0, ge=0, le=1000, description="Max gradient norm; 0 disables.")
    soft_target: SoftTarget = Field(default_factory=SoftTarget)
    real_loss_weight: float = Field(default=1.0, ge=0, le=100)
    synthetic_loss_weight: float = Field(default=1.0, ge=0, le=100)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    mixing: Literal["mixed", "synthetic-then-real", "real-then-synthetic"] = Field(
        default="mixed",
        description="mixed: a real and a synthetic batch every step (real loader cycled); or two phases.",
    )
    freeze_batch_norm: bool = Field(
        default=True,
        description="Keep BatchNorm in eval mode (only matters when images pass the encoder in training).",
    )
    trainable_scope: Literal["head", "last-block", "full"] = Field(
        default="head",
        description="head: cached features (the paper's CT); last-block/full run images through the encoder.",
    )
    head_init: Literal["text", "random"] = Field(
        default="text", description="text: zero-shot head (CT w. init)."
    )
    head_init_templates: list[Annotated[str, Field(max_length=300)]] | None = Field(
        default=None,
        max_length=128,
        description="Templates with {c} for the head (default: the label space's).",
    )
    selection: Literal["last", "best-validation"] = Field(
        default="last",
        description="Report the last epoch, or the best epoch on data.validation (never on test).",
    )
    feature_batch_size: int = Field(
        default=256, ge=1, le=8192, description="Batch for CLIP feature extraction."
    )


def _optional_copy(model: type[ApiModel], name: str) -> type[ApiModel]:
    """Same fields as ``model``, all optional and without defaults: a partial override."""
    from pydantic import create_model

    fields: dict[str, Any] = {}
    for fname, info in model.model_fields.items():
        fields[fname] = (info.annotation | None, Field(default=None, description=info.description))
    return create_model(name, __base__=ApiModel, __doc__=f"Overrides of {model.__name__}.", **fields)


ClassifierTuningOverrides = _optional_copy(ClassifierTuning, "ClassifierTuningOverrides")


class Method(ApiModel):
    classifier_tuning: ClassifierTuning = Field(
        default_factory=ClassifierTuning,
        description="Classifier Tuning of a CLIP encoder (the default method; ignored with pretrain).",
    )
    pretrain: Pretrain | None = Field(
        default=None,
        description="Pre-train a timm backbone on synthetic data, then transfer (the paper's Tables 8-11); "
        "the runs are then matrix.dataSizes x inits x objectives x labelSpaces x seeds.",
    )


class LabelSpaceData(ApiModel):
    """One value of matrix.labelSpaces: a named pre-training set (e.g. IN-1K Syn, IN-2K Syn)."""

    __cel_rules__ = (
        Rule(
            "!has(self.dataSizes) || self.dataSizes.all(s, s >= 0)",
            "matrix.labelSpaces[].dataSizes values must be non-negative",
            ".dataSizes",
        ),
    )

    name: str = Field(
        min_length=1, max_length=20, pattern=_DNS_LABEL, description="A short name (it is part of run names)."
    )
    synthetic: list[SyntheticSource] = Field(min_length=1, max_length=16)
    data_sizes: list[int] | None = Field(
        default=None,
        min_length=1,
        max_length=16,
        description="This label space's sizes (e.g. IN-1K Syn 1.2M and 2.4M, IN-2K Syn 2.4M and 4.0M); "
        "default: matrix.dataSizes.",
    )

    @field_validator("data_sizes")
    @classmethod
    def _unique(cls, values: list[int] | None) -> list[int] | None:
        if values is not None and len(set(values)) != len(values):
            raise ValueError(f"values must be unique, got {values}")
        return values


class Variant(ApiModel):
    """A named variation of the experiment (e.g. real-only 'CT w. init' vs. real + synthetic)."""

    name: DnsLabel
    synthetic: list[SyntheticSource] | None = Field(
        default=None, max_length=16, description="Replaces data.synthetic ([] for real data only)."
    )
    classifier_tuning: ClassifierTuningOverrides | None = None  # type: ignore[valid-type]


_PER_CELL = (
    "size(self.seeds) * (has(self.inits) ? size(self.inits) : 1) * "
    "(has(self.objectives) ? size(self.objectives) : 1)"
)
_SIZES = "(has(self.dataSizes) ? size(self.dataSizes) : 1)"


class Matrix(ApiModel):
    """shots x seeds x variants, each combination one run."""

    __cel_rules__ = (
        Rule(
            "self.shots.all(s, s >= 0 && s <= 1024)",
            "matrix.shots values must be between 0 and 1024",
            ".shots",
        ),
        Rule("self.seeds.all(s, s >= 0)", "matrix.seeds must be non-negative", ".seeds"),
        Rule(
            "size(self.shots) * size(self.seeds) * (has(self.variants) ? size(self.variants) : 1) "
            f"<= {MAX_RUNS}",
            f"the matrix expands to more than {MAX_RUNS} runs; split it into several experiments",
        ),
        Rule(
            "!has(self.dataSizes) || self.dataSizes.all(s, s >= 0)",
            "matrix.dataSizes values must be non-negative (0: no synthetic pre-training)",
            ".dataSizes",
        ),
        Rule(
            # runs = seeds x inits x objectives x (sizes summed over the label spaces), bounded by the
            # number of label spaces times the sizes of each (plain CEL has no sum or max)
            f"has(self.labelSpaces) ? self.labelSpaces.all(l, {_PER_CELL} * size(self.labelSpaces) * "
            f"(has(l.dataSizes) ? size(l.dataSizes) : {_SIZES}) <= {MAX_RUNS}) : "
            f"{_PER_CELL} * {_SIZES} <= {MAX_RUNS}",
            f"the pre-training matrix expands to more than {MAX_RUNS} runs; split it into several "
            "experiments",
        ),
    )

    shots: list[int] = Field(default_factory=lambda: [0], min_length=1, max_length=32)
    seeds: list[int] = Field(default_factory=lambda: [1], min_length=1, max_length=64)
    variants: list[Variant] | None = Field(
        default=None,
        min_length=1,
        max_length=32,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    # method.pretrain's axes (unset: the method's own value)
    data_sizes: list[int] | None = Field(
        default=None,
        min_length=1,
        max_length=16,
        description="Synthetic images per pre-training run (e.g. 1200000 of a 3.6M dataset, each class "
        "keeping its share; chosen by method.pretrain.data.capSeed). 0: no synthetic pre-training, the "
        "init alone is transferred (the paper's '0' column). Unset: every image.",
    )
    inits: list[Annotated[str, Field(max_length=1024, pattern=WEIGHTS_REF_PATTERN)]] | None = Field(
        default=None,
        min_length=1,
        max_length=8,
        description="Initial weights of the backbone (scratch, timm:tv_in1k, ...), as method.pretrain.init.",
    )
    objectives: list[Objective] | None = Field(default=None, min_length=1, max_length=2)
    label_spaces: list[LabelSpaceData] | None = Field(
        default=None,
        min_length=1,
        max_length=8,
        description="Named pre-training sets, each a label space's synthetic data (replaces data.synthetic).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )

    @field_validator("shots", "seeds", "data_sizes", "inits", "objectives")
    @classmethod
    def _unique(cls, values: list[Any] | None) -> list[Any] | None:
        if values is not None and len(set(values)) != len(values):
            raise ValueError(f"values must be unique, got {values}")
        return values

    @field_validator("inits")
    @classmethod
    def _weights(cls, values: list[str] | None) -> list[str] | None:
        for value in values or []:
            check_weights_ref(value)
        return values

    @model_validator(mode="after")
    def _unique_variants(self) -> Matrix:
        for what, items in (("variants", self.variants), ("labelSpaces", self.label_spaces)):
            names = [v.name for v in items or []]
            if len(set(names)) != len(names):
                raise ValueError(f"matrix.{what} names must be unique, got {names}")
        return self


class Execution(ApiModel):
    parallelism: int = Field(default=4, ge=1, le=MAX_RUNS, description="Runs at once.")
    retries_per_run: int = Field(default=1, ge=0, le=10)


_PRETRAIN_AXES = "has(self.matrix.dataSizes) || has(self.matrix.inits) || has(self.matrix.objectives) || "
_PRETRAIN_AXES += "has(self.matrix.labelSpaces)"
_TRANSFER = "self.method.pretrain.transfer"
_PRETRAIN_RULES = (
    Rule(
        f"has(self.method.pretrain) || !({_PRETRAIN_AXES})",
        "matrix.dataSizes, inits, objectives and labelSpaces are method.pretrain's axes; set method.pretrain "
        "or remove them",
        field_path=".matrix",
    ),
    Rule(
        "!has(self.method.pretrain) || (self.matrix.shots == [0] && !has(self.matrix.variants))",
        "method.pretrain runs expand over matrix.dataSizes, inits, objectives, labelSpaces and seeds; "
        "matrix.shots and matrix.variants belong to classifier tuning",
        field_path=".matrix.shots",
    ),
    Rule(
        "!has(self.method.pretrain) || self.method.pretrain.batchSize % "
        "(self.method.pretrain.distributed.nodes * (self.resources.gpus > 0 ? self.resources.gpus : 1)) == 0",
        "method.pretrain.batchSize must be divisible by the world size: method.pretrain.distributed.nodes x "
        "resources.gpus processes (one per CPU-only pod) each take an equal share of the global batch",
        field_path=".method.pretrain.batchSize",
    ),
    Rule(
        "!has(self.method.pretrain) || self.method.pretrain.precision != 'fp16' || self.resources.gpus > 0",
        "method.pretrain.precision fp16 needs GPUs (resources.gpus > 0); use bf16 or fp32 on CPU",
        field_path=".method.pretrain.precision",
    ),
    Rule(
        f"!has(self.method.pretrain) || !has({_TRANSFER}) || "
        f"!(has({_TRANSFER}.classification) || has({_TRANSFER}.linearProbe)) || "
        "(has(self.data.realTrain) && has(self.data.test))",
        "method.pretrain.transfer.classification and linearProbe train on data.realTrain and report top-1 "
        "on data.test (in labels): set both",
        field_path=".data.realTrain",
        reason="FieldValueRequired",
    ),
    Rule(
        "!has(self.method.pretrain) || !has(self.matrix.labelSpaces) || size(self.data.synthetic) == 0",
        "matrix.labelSpaces replaces data.synthetic for pre-training: set one of them",
        field_path=".data.synthetic",
    ),
    Rule(
        "!has(self.method.pretrain) || size(self.data.synthetic) > 0 || has(self.matrix.labelSpaces) || "
        "(has(self.matrix.dataSizes) && self.matrix.dataSizes.all(s, s == 0))",
        "method.pretrain needs synthetic data: data.synthetic or matrix.labelSpaces",
        field_path=".data.synthetic",
        reason="FieldValueRequired",
    ),
    Rule(
        "!has(self.method.pretrain) || has(self.method.pretrain.transfer) || "
        "((!has(self.matrix.dataSizes) || !self.matrix.dataSizes.exists(s, s == 0)) && "
        "(!has(self.matrix.labelSpaces) || !self.matrix.labelSpaces.exists(l, has(l.dataSizes) && "
        "l.dataSizes.exists(s, s == 0))))",
        "matrix.dataSizes 0 runs no pre-training, only the transfer of the init: set "
        "method.pretrain.transfer",
        field_path=".matrix.dataSizes",
    ),
)


class RecognitionExperimentSpec(ApiModel):
    """Train and evaluate recognition models on synthetic and/or real data."""

    __cel_rules__ = (
        Rule(
            "!self.matrix.shots.exists(s, s > 0) || has(self.data.realTrain)",
            "few-shot runs (matrix.shots > 0) need data.realTrain",
            field_path=".data.realTrain",
            reason="FieldValueRequired",
        ),
        Rule(
            "self.method.classifierTuning.selection != 'best-validation' || has(self.data.validation)",
            "method.classifierTuning.selection best-validation needs data.validation (never the test set)",
            field_path=".data.validation",
            reason="FieldValueRequired",
        ),
        Rule(
            "has(self.method.pretrain) || has(self.data.test)",
            "classifier tuning needs data.test (every run reports top-1 on it)",
            field_path=".data.test",
            reason="FieldValueRequired",
        ),
        *_PRETRAIN_RULES,
        *_immutable("labels", "backbone", "data", "method", "matrix", "output"),
    )

    labels: LabelSpace
    backbone: Backbone = Field(default_factory=Backbone)
    data: ExperimentData = Field(default_factory=ExperimentData)
    method: Method = Field(default_factory=Method)
    matrix: Matrix = Field(default_factory=Matrix)
    execution: Execution = Field(default_factory=Execution)
    resources: Resources = Field(default_factory=Resources)
    scheduling: Scheduling = Field(default_factory=Scheduling)
    output: Output
    model_hub: ModelHub | None = None
    run_policy: RunPolicy = Field(default_factory=RunPolicy)
