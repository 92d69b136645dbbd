"""The RecognitionExperiment spec: backbone, data, Classifier Tuning, the matrix of runs and execution."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from synthrec.api.base import (
    _DNS_LABEL,
    MAX_PINNED_DATASETS,
    MAX_RESOURCE_NAME,
    MAX_RUNS,
    ApiModel,
    DnsLabel,
    OutputUri,
    Rule,
    _check_model_ref,
    _check_storage_uri,
    _check_text,
    _text,
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


PLACEHOLDERS = ("{shots}", "{seed}")
_TEMPLATE_ATOM = r"([a-z0-9]|\{shots\}|\{seed\})"
_DATASET_REF = rf"^{_TEMPLATE_ATOM}(([-a-z0-9]|\{{shots\}}|\{{seed\}})*{_TEMPLATE_ATOM})?$"


class SyntheticSource(ApiModel):
    """Synthetic training data: a SyntheticDataset in the same namespace, or the output URI of one.

    ``{shots}`` and ``{seed}`` in either are replaced by each run's shots and seed, so one line references
    a dataset per matrix cell: Real Guidance starts from the run's own real shots, and its noise level
    depends on their number (``datasetRef: eurosat-rg-{shots}shot-seed{seed}``)."""

    __cel_rules__ = (Rule("has(self.datasetRef) != has(self.uri)", "set exactly one of datasetRef or uri"),)

    dataset_ref: str | None = Field(
        default=None,
        max_length=MAX_RESOURCE_NAME,
        pattern=_DATASET_REF,
        description="A SyntheticDataset name; {shots} and {seed} become the run's.",
    )
    uri: OutputUri | None = Field(default=None, description="A dataset's output URI; {shots} and {seed} too.")

    _v_uri = field_validator("uri")(lambda v: _check_storage_uri(v, allow_tiny=False))

    @property
    def templated(self) -> bool:
        return any(p in (self.dataset_ref or self.uri or "") for p in PLACEHOLDERS)

    def for_run(self, shots: int, seed: int) -> SyntheticSource:
        """This source with {shots} and {seed} replaced by a run's (itself when it has neither)."""
        if not self.templated:
            return self

        def fill(value: str | None) -> str | None:
            return (
                None if value is None else value.replace("{shots}", str(shots)).replace("{seed}", str(seed))
            )

        # not validated here: the spec's validator checks every filled name and says which run makes it
        return SyntheticSource.model_construct(dataset_ref=fill(self.dataset_ref), uri=fill(self.uri))


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
        default=None,
        description="Real validation images (e.g. CoOp's val split): every run evaluates its models on them "
        "each epoch, reports the best-validation model next to the last one, and Tip-Adapter searches its "
        "alpha and beta on them. Without it, selection best-validation holds out part of the real shots.",
    )


class SoftTarget(ApiModel):
    """Soft-target cross-entropy (SCE): loss = weight * SCE + (1 - weight) * CE on synthetic data, the
    target being the frozen zero-shot head's prediction on the image (the teacher)."""

    weight: float = Field(default=0.5, ge=0, le=1, description="Paper README: 0.5.")
    temperature: float = Field(
        default=2.0,
        gt=0,
        le=100,
        description="T of the soft target softmax(teacher logits / T), logits scaled by 100 (paper: 2).",
    )
    pseudo_labels: Literal["soft", "hard"] = Field(
        default="soft",
        description="soft: the teacher's softmax at temperature T (SCE); hard: cross-entropy with the "
        "teacher's argmax class (the official --hard_pseudo_label the paper ablates; T unused).",
    )


Selection = Literal["last", "best-validation"]
SELECTION_HELP = (
    "Which epoch's model a run reports: last (the default), or the one with the best top-1 on the run's "
    "validation set: data.validation, else a held-out part of the real shots (min(4, max(1, shots // 4)) "
    "per class, trained without them). Never the test set; both results are reported either way."
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
    selection: Selection = Field(default="last", description=SELECTION_HELP)
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


# ------------------------------------------------------------------------------ Figure 1's baselines

MethodName = Literal["classifier-tuning", "zero-shot", "tip-adapter", "tip-adapter-f", "coop"]
# Methods of real shots only (the paper's Figure 1 baselines): no synthetic data, at least one shot.
SHOT_METHODS: tuple[str, ...] = ("tip-adapter", "tip-adapter-f", "coop")


class TipAdapter(ApiModel):
    """Tip-Adapter and Tip-Adapter-F (Zhang et al., ECCV 2022; official gaopengcuhk/Tip-Adapter), on the
    frozen backbone: a cache whose keys F are the real shots' features (averaged over ``augmentViews``
    augmented views, L2-normalised) and values L their one-hot labels. For an L2-normalised image feature
    f: ``logits = logit_scale * f W^T + alpha * exp(-beta * (1 - f F^T)) L``, W the zero-shot head.
    Tip-Adapter-F trains the keys (cross-entropy, alpha and beta fixed), then both search alpha and beta
    on the run's validation set. Defaults are the official configs'; the per-dataset ones come from the
    label space's preset (EuroSAT: alpha 2, search up to beta 12 / alpha 10, 100 epochs)."""

    alpha: float | None = Field(
        default=None,
        gt=0,
        le=1000,
        description="Initial alpha, the cache's weight. Default: the official init_alpha of the preset "
        "(EuroSAT 2, SUN397 1.17, DTD 2, ...; 1 for a label space without one).",
    )
    beta: float = Field(default=1.0, gt=0, le=1000, description="Initial beta, the sharpness (official: 1).")
    search: bool = Field(
        default=True,
        description="Grid-search alpha and beta on the run's validation set, when it has one (official: on "
        "the whole CoOp val split).",
    )
    search_scale: list[Annotated[float, Field(gt=0.1, le=1000)]] | None = Field(
        default=None,
        min_length=2,
        max_length=2,
        description="[beta max, alpha max] of the grid (i * (max - 0.1) / steps + 0.1, i < steps). Default: "
        "the preset's official search_scale (EuroSAT [12, 10]; [10, 10] without one).",
    )
    search_steps: list[Annotated[int, Field(ge=1, le=1000)]] = Field(
        default_factory=lambda: [200, 20],
        min_length=2,
        max_length=2,
        description="[beta steps, alpha steps] (official: [200, 20]).",
    )
    augment_views: int = Field(
        default=10,
        ge=0,
        le=100,
        description="Augmented views (random resized crop 0.5-1, flip) whose features are averaged into a "
        "key (official augment_epoch: 10); Tip-Adapter-F also trains on a fresh view each epoch. 0: the "
        "shots' plain centre-crop features, no augmentation.",
    )
    epochs: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="Tip-Adapter-F epochs. Default: the official train_epoch (20; EuroSAT 100).",
    )
    lr: float = Field(default=1e-3, gt=0, le=10, description="Tip-Adapter-F AdamW learning rate (official).")
    weight_decay: float = Field(
        default=0.01, ge=0, le=10, description="AdamW weight decay (official: torch's default, 0.01)."
    )
    eps: float = Field(default=1e-4, gt=0, le=1, description="AdamW epsilon (official: 1e-4).")
    batch_size: int = Field(default=256, ge=1, le=65_536, description="Tip-Adapter-F batch (official: 256).")
    selection: Selection = Field(default="last", description=SELECTION_HELP)


class CoOp(ApiModel):
    """CoOp (Zhou et al., IJCV 2022; official KaiyangZhou/CoOp): the class text is
    ``[SOS][V]_1..[V]_M[CLASS][.][EOS]`` with M learned context vectors in the token-embedding space,
    passed through CLIP's frozen text encoder and pooled at the end-of-text token; logits are
    ``logit_scale * cos(image, text)``, cross-entropy on the real shots, both encoders frozen. Defaults are
    the official few-shot setting for RN50: M = 16 unified context at the end, random N(0, 0.02) init,
    SGD 0.002, batch 32, cosine per epoch after one epoch at 1e-5, 50/100/100/200/200 epochs for
    1/2/4/8/16 shots."""

    context_tokens: int = Field(default=16, ge=1, le=64, description="M, learned context vectors (16).")
    context_init: str | None = _text(
        200,
        default=None,
        description="Words whose token embeddings initialise the context, e.g. 'a photo of a' (M becomes "
        "their number). Default: random N(0, initStd).",
    )
    class_specific: bool = Field(default=False, description="One context per class (CoOp's CSC).")
    class_token_position: Literal["end", "middle", "front"] = Field(
        default="end", description="Where the class name goes relative to the context (official: end)."
    )
    init_std: float = Field(default=0.02, gt=0, le=1, description="Std of the random context init.")
    epochs: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="Default: the official RN50 schedule, 50 epochs at 1 shot, 100 at 2-4, 200 at 8 or more "
        "(ImageNet: 50).",
    )
    lr: float = Field(default=2e-3, gt=0, le=10, description="SGD learning rate (official: 0.002).")
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=5e-4, ge=0, le=10, description="Official (Dassl's default): 5e-4.")
    batch_size: int = Field(default=32, ge=1, le=65_536, description="Official: 32.")
    warmup_epochs: int = Field(default=1, ge=0, le=1000, description="Epochs at warmupLr before the cosine.")
    warmup_lr: float = Field(default=1e-5, ge=0, le=10, description="Official constant warmup: 1e-5.")
    augment: bool = Field(
        default=True,
        description="A fresh augmented view (random resized crop 0.08-1, flip) of every shot each epoch, "
        "through the frozen image encoder, as CoOp trains; false: the shots' plain features.",
    )
    selection: Selection = Field(default="last", description=SELECTION_HELP)

    _v_init = field_validator("context_init")(lambda v: _check_text(v, "coop.contextInit"))


TipAdapterOverrides = _optional_copy(TipAdapter, "TipAdapterOverrides")
CoOpOverrides = _optional_copy(CoOp, "CoOpOverrides")


class Method(ApiModel):
    """What a run trains, and the settings of every method (a variant picks one with ``method``)."""

    name: MethodName = Field(
        default="classifier-tuning",
        description="The method of runs whose variant names none: classifier-tuning (the paper's CT), "
        "zero-shot (CLIP's zero-shot head, one run), tip-adapter, tip-adapter-f, coop (real shots only).",
    )
    classifier_tuning: ClassifierTuning = Field(default_factory=ClassifierTuning)
    tip_adapter: TipAdapter = Field(default_factory=TipAdapter)
    coop: CoOp = Field(default_factory=CoOp)
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
    """A named variation of the experiment (e.g. real-only 'CT w. init' vs. real + synthetic, or one of
    Figure 1's baselines)."""

    __cel_rules__ = (
        Rule(
            "!has(self.method) || self.method == 'classifier-tuning' || !has(self.synthetic) || "
            "size(self.synthetic) == 0",
            "only classifier-tuning trains on synthetic data: zero-shot, tip-adapter(-f) and coop use none",
            field_path=".synthetic",
        ),
    )

    name: DnsLabel
    method: MethodName | None = Field(default=None, description="Default: method.name.")
    synthetic: list[SyntheticSource] | None = Field(
        default=None,
        max_length=16,
        description="Replaces data.synthetic ([] for real data only); zero-shot, tip-adapter(-f) and coop "
        "never use synthetic data.",
    )
    shots: list[int] | None = Field(
        default=None, min_length=1, max_length=32, description="Only these of matrix.shots."
    )
    seeds: list[int] | None = Field(
        default=None, min_length=1, max_length=64, description="Only these of matrix.seeds."
    )
    classifier_tuning: ClassifierTuningOverrides | None = None  # type: ignore[valid-type]
    tip_adapter: TipAdapterOverrides | None = None  # type: ignore[valid-type]
    coop: CoOpOverrides | None = None  # type: ignore[valid-type]

    @field_validator("shots", "seeds")
    @classmethod
    def _unique(cls, values: list[int] | None) -> list[int] | None:
        if values is not None and len(set(values)) != len(values):
            raise ValueError(f"values must be unique, got {values}")
        return values


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
            "!has(self.variants) || self.variants.all(v, (!has(v.shots) || v.shots.all(s, s in self.shots)) "
            "&& (!has(v.seeds) || v.seeds.all(s, s in self.seeds)))",
            "a variant's shots and seeds must be among matrix.shots and matrix.seeds",
            ".variants",
        ),
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

    @model_validator(mode="after")
    def _runs_are_possible(self) -> RecognitionExperimentSpec:
        """What each variant's runs need: shots for the real-shot baselines, a validation set for
        best-validation selection, dataset names that stay names once {shots} and {seed} are filled."""
        import re

        variants: list[Variant | None] = list(self.matrix.variants or [None])
        datasets: set[str] = set()
        for variant in variants:
            where = f"matrix.variants[{variant.name}]" if variant else "method"
            method = (variant.method if variant else None) or self.method.name
            shots = (variant.shots if variant and variant.shots else None) or self.matrix.shots
            seeds = (variant.seeds if variant and variant.seeds else None) or self.matrix.seeds
            if method in SHOT_METHODS and 0 in shots:
                raise ValueError(
                    f"{where}: {method} learns from real shots and cannot run at 0 shots; leave 0 out of its "
                    "shots (variant shots: [...]); zero-shot CLIP is method zero-shot"
                )
            selection = self._selection(method, variant)
            if selection == "best-validation" and self.data.validation is None and min(shots) < 2:
                raise ValueError(
                    f"{where}: selection best-validation needs data.validation (never the test set), or at "
                    f"least 2 real shots per class to hold out (shots {min(shots)}); set data.validation "
                    "(e.g. CoOp's val split) or leave the runs with fewer shots out"
                )
            sources = (
                self.data.synthetic if variant is None or variant.synthetic is None else variant.synthetic
            )
            if method != "classifier-tuning":
                sources = []
            for source in sources:
                for n in shots:
                    for seed in seeds:
                        filled = source.for_run(n, seed)
                        datasets.add(filled.dataset_ref or str(filled.uri))
                        ref = filled.dataset_ref
                        if ref is not None and (
                            len(ref) > MAX_RESOURCE_NAME or not re.match(_DNS_LABEL, ref)
                        ):
                            raise ValueError(
                                f"{where}: datasetRef {source.dataset_ref!r} becomes {ref!r} at {n} shots, "
                                f"seed {seed}: not a SyntheticDataset name (at most {MAX_RESOURCE_NAME} "
                                "characters: lowercase letters, digits, '-')"
                            )
        if len(datasets) > MAX_PINNED_DATASETS:
            raise ValueError(
                f"the runs reference {len(datasets)} synthetic datasets, more than {MAX_PINNED_DATASETS}; "
                "split the experiment"
            )
        return self

    def _selection(self, method: str, variant: Variant | None) -> str:
        block = {"classifier-tuning": "classifier_tuning", "tip-adapter-f": "tip_adapter", "coop": "coop"}
        attr = block.get(method)
        if attr is None:
            return "last"
        override = getattr(variant, attr, None) if variant else None
        if override is not None and override.selection is not None:
            return str(override.selection)
        return str(getattr(self.method, attr).selection)
