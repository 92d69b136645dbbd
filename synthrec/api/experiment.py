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
    test: RealData = Field(description="Real test images: every run reports top-1 on them.")
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
    classifier_tuning: ClassifierTuning = Field(default_factory=ClassifierTuning)


class Variant(ApiModel):
    """A named variation of the experiment (e.g. real-only 'CT w. init' vs. real + synthetic)."""

    name: DnsLabel
    synthetic: list[SyntheticSource] | None = Field(
        default=None, max_length=16, description="Replaces data.synthetic ([] for real data only)."
    )
    classifier_tuning: ClassifierTuningOverrides | None = None  # type: ignore[valid-type]


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
    )

    shots: list[int] = Field(default_factory=lambda: [0], min_length=1, max_length=32)
    seeds: list[int] = Field(default_factory=lambda: [1], min_length=1, max_length=64)
    variants: list[Variant] | None = Field(
        default=None,
        min_length=1,
        max_length=32,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )

    @field_validator("shots", "seeds")
    @classmethod
    def _unique(cls, values: list[int]) -> list[int]:
        if len(set(values)) != len(values):
            raise ValueError(f"values must be unique, got {values}")
        return values

    @model_validator(mode="after")
    def _unique_variants(self) -> Matrix:
        names = [v.name for v in self.variants or []]
        if len(set(names)) != len(names):
            raise ValueError(f"matrix.variants names must be unique, got {names}")
        return self


class Execution(ApiModel):
    parallelism: int = Field(default=4, ge=1, le=MAX_RUNS, description="Runs at once.")
    retries_per_run: int = Field(default=1, ge=0, le=10)


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
        *_immutable("labels", "backbone", "data", "method", "matrix", "output"),
    )

    labels: LabelSpace
    backbone: Backbone = Field(default_factory=Backbone)
    data: ExperimentData
    method: Method = Field(default_factory=Method)
    matrix: Matrix = Field(default_factory=Matrix)
    execution: Execution = Field(default_factory=Execution)
    resources: Resources = Field(default_factory=Resources)
    scheduling: Scheduling = Field(default_factory=Scheduling)
    output: Output
    model_hub: ModelHub | None = None
    run_policy: RunPolicy = Field(default_factory=RunPolicy)
