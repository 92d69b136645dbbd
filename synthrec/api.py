"""The synthrec API: SyntheticDataset and RecognitionExperiment (group synthrec.io, version v1alpha1).

These pydantic models are the single source of truth: the CRDs in crds/ are generated from them
(``synthrec crds``), the operator and the local mode parse specs with them, and their CEL rules are
enforced by the API server, by ``synthrec validate`` and by pydantic alike (see synthrec/cel.py).

Defaults are the paper's values wherever the paper (or its official code, as documented in
docs of the method spec) has one; each field's description says where a default comes from.
Python attributes are snake_case; the wire format (YAML, JSON, CRD) is camelCase.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from synthrec import cel
from synthrec.uris import (
    MODEL_REF_PATTERN,
    OUTPUT_URI_PATTERN,
    STORAGE_URI_PATTERN,
    URIError,
    parse_model_ref,
    parse_storage_uri,
)

GROUP = "synthrec.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Child Job names are <resource>-<stage>-a<attempt> and Job names become label values (<= 63 chars).
MAX_RESOURCE_NAME = 40
MAX_RUNS = 512  # bounds status.results; larger sweeps belong in several experiments
MAX_CLASSES = 4096

Rule = cel.CelRule

_QUANTITY = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# ---------------------------------------------------------------------------------------------- base


def _schema_extra(schema: dict[str, Any], cls: type) -> None:
    rules: tuple[cel.CelRule, ...] = getattr(cls, "__cel_rules__", ())
    if rules:
        schema["x-kubernetes-validations"] = [r.to_schema() for r in rules]


class ApiModel(BaseModel):
    """Base of every API object: camelCase on the wire, unknown fields rejected, CEL rules enforced."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        json_schema_extra=_schema_extra,
        validate_default=False,
    )
    __cel_rules__: ClassVar[tuple[cel.CelRule, ...]] = ()

    @model_validator(mode="after")
    def _enforce_cel_rules(self) -> ApiModel:
        rules = [r for r in self.__cel_rules__ if not r.transition]
        if rules:
            wire = self.wire()
            for rule in rules:
                if not cel.evaluate(rule.rule, wire):
                    raise ValueError(rule.message)
        return self

    def wire(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase, unset optional fields absent."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def _text(max_length: int = 253, **kw: Any) -> Any:
    return Field(max_length=max_length, **kw)


def _check_text(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    if not value.strip():
        raise ValueError(f"{what} must not be empty or only whitespace")
    if _CONTROL.search(value):
        raise ValueError(f"{what} {value[:40]!r} contains control characters (newline, tab, NUL, ...)")
    return value


def _check_storage_uri(value: str | None, *, allow_tiny: bool = True) -> str | None:
    if value is not None:
        try:
            parse_storage_uri(value, allow_tiny=allow_tiny)
        except URIError as exc:
            raise ValueError(str(exc)) from None
    return value


def _check_model_ref(value: str | None, *, allow_name: bool = False) -> str | None:
    if value is not None:
        try:
            parse_model_ref(value, allow_name=allow_name)
        except URIError as exc:
            raise ValueError(str(exc)) from None
    return value


StorageUri = Annotated[
    str,
    Field(
        max_length=1024,
        pattern=STORAGE_URI_PATTERN,
        description="A folder URI: s3://bucket/prefix/ or file:///absolute/path/ (tiny://real/... is the "
        "built-in demo data).",
    ),
]
OutputUri = Annotated[
    str,
    Field(
        max_length=1024,
        pattern=OUTPUT_URI_PATTERN,
        description="A folder URI: s3://bucket/prefix/ or file:///abs/.",
    ),
]
ModelRefStr = Annotated[
    str,
    Field(
        max_length=1024,
        pattern=MODEL_REF_PATTERN,
        description="A model reference: org/name or hf://org/name@revision (Hugging Face), "
        "s3://bucket/folder/ or file:///absolute/folder.",
    ),
]
DnsLabel = Annotated[str, Field(min_length=1, max_length=63, pattern=_DNS_LABEL)]
Quantity = Annotated[str, Field(max_length=64, pattern=_QUANTITY)]

# ---------------------------------------------------------------------------------------- label space


class LabelClass(ApiModel):
    """One class of the label space."""

    name: str = _text(300, min_length=1, description="Class name used in generation prompts.")
    head_name: str | None = _text(
        300,
        default=None,
        description="Class name used for the CLIP classifier head and zero-shot scores "
        "(defaults to name; the official code uses CoOp names here for EuroSAT).",
    )

    _v_name = field_validator("name")(lambda v: _check_text(v, "labels.classes[].name"))
    _v_head = field_validator("head_name")(lambda v: _check_text(v, "labels.classes[].headName"))


class LabelSpace(ApiModel):
    """The classes to generate and recognise: a preset by name, or explicit classes."""

    __cel_rules__ = (
        Rule("has(self.preset) != has(self.classes)", "set exactly one of labels.preset or labels.classes"),
        Rule(
            "!has(self.subset) || has(self.preset)",
            "labels.subset picks classes of a preset; it needs labels.preset",
            field_path=".subset",
        ),
        Rule(
            "!has(self.templates) || self.templates.all(t, t.contains('{c}'))",
            "every labels.templates entry needs a {c} placeholder for the class name",
            field_path=".templates",
        ),
        Rule(
            "!has(self.promptTemplate) || self.promptTemplate.contains('{}')",
            "labels.promptTemplate needs a {} placeholder for the class name",
            field_path=".promptTemplate",
        ),
    )

    preset: str | None = _text(
        64,
        default=None,
        description="A built-in label space: class names and CLIP templates (see synthrec.presets).",
        json_schema_extra=lambda s: s.update(enum=_preset_enum()),
    )
    classes: list[LabelClass] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_CLASSES,
        description="Explicit classes, in class-index order.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    subset: list[Annotated[str, Field(max_length=300)]] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_CLASSES,
        description="Keep only these classes of the preset (by name), in the preset's order.",
    )
    templates: list[Annotated[str, Field(max_length=300)]] | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="CLIP prompt templates with {c} for the zero-shot head, the CLIP filter and soft "
        "targets (default: the preset's, i.e. the paper's head-init set).",
    )
    prompt_template: str | None = _text(
        300,
        default=None,
        description="Basic-strategy generation prompt with {} for the class name "
        "(default: the preset's, 'a photo of a {}.' otherwise).",
    )

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from synthrec.presets import PresetError, canonical_preset_name

        try:
            canonical = canonical_preset_name(value)
        except PresetError as exc:
            raise ValueError(str(exc)) from None
        if value not in _preset_enum():  # the CRD enum is exact; accept here only what the cluster accepts
            raise ValueError(f"unknown preset {value!r}; did you mean {canonical!r}?")
        return canonical

    @model_validator(mode="after")
    def _unique_names(self) -> LabelSpace:
        if self.classes:
            for attr, what in (("name", "name"), ("head_name", "headName")):
                seen: set[str] = set()
                for c in self.classes:
                    value = getattr(c, attr) or c.name
                    if value in seen:
                        raise ValueError(f"labels.classes: {what} {value!r} appears more than once")
                    seen.add(value)
        return self


def _preset_enum() -> list[str]:
    from synthrec.presets import PRESET_ALIASES, PRESET_NAMES

    return sorted({*PRESET_NAMES, *PRESET_ALIASES})


# -------------------------------------------------------------------------------------------- prompts


class Decoding(ApiModel):
    """Decoding of the word-to-sentence model. Defaults reproduce the official code: it passes
    do_sample=True and nothing else, so transformers' defaults apply (top-k 50, top-p 1, T 1, 20 tokens)."""

    do_sample: bool = True
    top_k: int = Field(default=50, ge=0, le=1000)
    top_p: float = Field(default=1.0, gt=0, le=1)
    temperature: float = Field(default=1.0, gt=0, le=10)
    num_beams: int = Field(default=1, ge=1, le=32)
    max_new_tokens: int = Field(default=20, ge=1, le=512)
    repetition_penalty: float = Field(default=1.0, gt=0, le=10)


class Prompts(ApiModel):
    """How prompts are made: Basic templates (B) or Language Enhancement (LE, paper §3.1)."""

    __cel_rules__ = (
        Rule(
            "!has(self.templates) || self.templates.all(t, t.contains('{}'))",
            "every prompts.templates entry needs a {} placeholder for the class name",
            field_path=".templates",
        ),
        Rule(
            "!has(self.wrapper) || self.wrapper.contains('{}')",
            "prompts.wrapper needs a {} placeholder for the sentence",
            field_path=".wrapper",
        ),
        Rule(
            "!has(self.inputTemplate) || self.inputTemplate.contains('{}')",
            "prompts.inputTemplate needs a {} placeholder for the class name",
            field_path=".inputTemplate",
        ),
    )

    strategy: Literal["basic", "language-enhancement"] = Field(
        default="basic",
        description="basic: class name in a template; language-enhancement: sentences from a "
        "word-to-sentence model (T5 fine-tuned on CommonGen in the paper).",
    )
    templates: list[Annotated[str, Field(max_length=300)]] | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="basic: generation templates with {} for the class name (default: the label "
        "space's promptTemplate).",
    )
    wrapper: str | None = _text(
        300,
        default=None,
        description="language-enhancement: template with {} for each sentence, e.g. EuroSAT's "
        "'a centered satellite photo of {}' (default: the preset's wrapper, else the sentence as is).",
    )
    model: ModelRefStr = Field(
        default="hf://mrm8488/t5-base-finetuned-common_gen",
        description="language-enhancement: seq2seq model (paper: T5-base fine-tuned on CommonGen).",
    )
    sentences_per_class: int = Field(
        default=200,
        ge=1,
        le=100_000,
        description="language-enhancement: sentences kept per class (paper: 200).",
    )
    oversample: int = Field(
        default=50,
        ge=0,
        le=100_000,
        description="language-enhancement: extra sentences sampled before exact duplicates are dropped "
        "(official code: 50).",
    )
    input_template: str | None = _text(
        300,
        default=None,
        description="language-enhancement: model input with {} for the class name (official code: 'a {}').",
    )
    decoding: Decoding = Field(default_factory=Decoding)
    batch_size: int = Field(default=64, ge=1, le=4096, description="language-enhancement: inputs per call.")
    seed: int = Field(default=0, ge=0, le=2**31 - 1)

    _v_model = field_validator("model")(lambda v: _check_model_ref(v))


# ------------------------------------------------------------------------------------------ generator


class Generator(ApiModel):
    """The text-to-image model. The paper used GLIDE (100 respaced DDPM steps, guidance 3.0, 256 px,
    10 images per prompt); any diffusers text-to-image pipeline works here."""

    __cel_rules__ = (
        Rule(
            "self.resolution % 8 == 0",
            "generator.resolution must be a multiple of 8",
            field_path=".resolution",
        ),
        Rule(
            "!has(self.imagesPerClass) || self.imagesPerClass >= 1",
            "generator.imagesPerClass must be at least 1",
            field_path=".imagesPerClass",
        ),
    )

    model: ModelRefStr
    pipeline: str = Field(
        default="auto",
        max_length=128,
        pattern=r"^(auto|[A-Za-z][A-Za-z0-9_]*)$",
        description="auto (diffusers AutoPipeline) or a diffusers pipeline class name.",
    )
    scheduler: str | None = Field(
        default=None,
        max_length=128,
        pattern=r"^[A-Za-z][A-Za-z0-9_]*$",
        description="A diffusers scheduler class, e.g. DPMSolverMultistepScheduler (default: the model's).",
    )
    steps: int = Field(
        default=50,
        ge=1,
        le=1000,
        description="Denoising steps (diffusers default 50; the paper's GLIDE ran 100 respaced DDPM steps).",
    )
    guidance_scale: float = Field(
        default=3.0, ge=0, le=50, description="Classifier-free guidance (paper: 3.0)."
    )
    resolution: int = Field(default=256, ge=64, le=2048, description="Square output size (paper: 256).")
    images_per_prompt: int = Field(default=10, ge=1, le=10_000, description="Images per prompt (paper: 10).")
    images_per_class: int | None = Field(
        default=None,
        le=1_000_000,
        description="If set, images per class spread evenly over the class's prompts (overrides "
        "imagesPerPrompt; the paper's 2000 = 200 sentences x 10).",
    )
    batch_size: int = Field(default=16, ge=1, le=1024, description="Images per pipeline call.")
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        default="auto", description="auto: float16 on GPU, float32 on CPU."
    )
    negative_prompt: str | None = _text(1000, default=None)
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Base seed; every image derives its own.")
    compile: bool = Field(default=False, description="torch.compile the denoiser (GPU only).")
    jpeg_quality: int = Field(default=95, ge=50, le=100)

    _v_model = field_validator("model")(lambda v: _check_model_ref(v))


class RealData(ApiModel):
    """Real images: an ImageFolder tree (<uri>/<class folder>/<image>) or WebDataset shards."""

    uri: StorageUri
    format: Literal["imagefolder", "webdataset"] = "imagefolder"
    class_mapping: dict[str, Annotated[str, Field(max_length=300)]] | None = Field(
        default=None,
        max_length=MAX_CLASSES,
        description="Folder (or WebDataset label) name -> class name. Default: folder names matched to "
        "class names case-insensitively, with '_' read as a space.",
    )
    on_bad_image: Literal["skip", "fail"] = Field(
        default="skip",
        description="An unreadable or corrupt image is skipped and counted (skip) or fails the stage (fail).",
    )

    _v_uri = field_validator("uri")(lambda v: _check_storage_uri(v))


# Real guidance noise per shot count (paper README: refer_img_iters 15/20/35/40/50 of GLIDE's 100 respaced
# steps for 16/8/4/2/1 shots), expressed as img2img strength t/1000 (method spec §2.3 and §5.8).
REAL_GUIDANCE_STRENGTH = {16: 0.14, 8: 0.19, 4: 0.34, 2: 0.39, 1: 0.49}


def default_real_guidance_strength(shots: int) -> float:
    """The paper's strength for ``shots``; in between, the value of the next smaller tabulated shot count."""
    eligible = [s for s in REAL_GUIDANCE_STRENGTH if s <= shots]
    return REAL_GUIDANCE_STRENGTH[max(eligible)] if eligible else REAL_GUIDANCE_STRENGTH[1]


class RealGuidance(ApiModel):
    """Real Guidance (RG, few-shot): start denoising from the noised real shots (SDEdit-style img2img)."""

    source: RealData
    shots: int = Field(default=16, ge=1, le=1000, description="Real images per class used as guidance.")
    strength: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="img2img strength; default from the paper's shots table "
        "(16:0.14, 8:0.19, 4:0.34, 2:0.39, 1:0.49).",
    )
    images_per_class: int = Field(
        default=800, ge=1, le=1_000_000, description="Synthetic images per class (paper: 800 for every M)."
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Seed for picking the shots.")

    def resolved_strength(self) -> float:
        return self.strength if self.strength is not None else default_real_guidance_strength(self.shots)


# --------------------------------------------------------------------------------------------- filter


class ClipModel(ApiModel):
    """An open_clip model: a built-in name with a pretrained tag, or a folder (file://, s3://, hf://)."""

    model: str = Field(
        default="RN50",
        max_length=1024,
        description="open_clip architecture (RN50, ViT-B-16, ...) or a model folder reference.",
    )
    pretrained: str | None = Field(
        default="openai", max_length=128, description="open_clip pretrained tag (ignored for folders)."
    )

    _v_model = field_validator("model")(lambda v: _check_model_ref(v, allow_name=True))


class RealFiltering(ApiModel):
    """Real Filtering (RF, few-shot): drop a synthetic image whose nearest real shot has another class."""

    enabled: bool = False
    rule: Literal["nearest", "strict"] = Field(
        default="nearest",
        description="nearest: drop if the nearest real neighbour has another class; strict: also drop if "
        "any other-class shot is more similar than the best same-class shot among the k nearest.",
    )
    k: int = Field(default=1, ge=1, le=100, description="Neighbours considered (majority vote for nearest).")
    source: RealData | None = Field(default=None, description="Real shots (default: realGuidance.source).")
    shots: int | None = Field(
        default=None, ge=1, le=1000, description="Shots per class (default: realGuidance.shots)."
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=2**31 - 1,
        description="Seed for picking the shots (default: realGuidance.seed: RF sees the shots RG used).",
    )


class Filter(ApiModel):
    """CLIP Filter (CF, paper §3.1): keep K images per class whose zero-shot probability of the intended
    class beats the threshold; soft targets for SCE come from the same zero-shot head."""

    __cel_rules__ = (
        Rule(
            "!has(self.threshold) || (self.threshold >= 0.0 && self.threshold <= 1.0)",
            "filter.threshold is a probability between 0 and 1 (omit it for the paper's 1/C)",
            field_path=".threshold",
        ),
    )

    enabled: bool = True
    clip: ClipModel = Field(default_factory=ClipModel, description="Scorer (paper: CLIP RN50).")
    threshold: float | None = Field(
        default=None,
        description="Minimum zero-shot probability; omit for the paper's 1/C (number of classes).",
    )
    keep_per_class: int = Field(
        default=800, ge=1, le=1_000_000, description="K images kept per class (paper: 800)."
    )
    selection: Literal["random", "top"] = Field(
        default="random",
        description="random: the official rule (K at random among those passing when at least K pass, "
        "else the top K by score); top: always the top K by score.",
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    real_filtering: RealFiltering | None = None
    soft_target_temperature: float = Field(
        default=2.0,
        gt=0,
        le=100,
        description="T for soft targets softmax(logits / T) with logits scaled by 100.",
    )
    batch_size: int = Field(default=256, ge=1, le=8192)


# ------------------------------------------------------------------------------------------ execution


class Sharding(ApiModel):
    """How the work is split into Indexed Job shards."""

    __cel_rules__ = (
        Rule(
            "!has(self.parallelism) || self.parallelism <= self.shards",
            "sharding.parallelism must not exceed sharding.shards",
            field_path=".parallelism",
        ),
        Rule(
            "self.maxFailedShards < self.shards",
            "sharding.maxFailedShards must be smaller than sharding.shards",
            field_path=".maxFailedShards",
        ),
    )

    shards: int = Field(default=1, ge=1, le=10_000, description="Number of shards (Indexed Job completions).")
    parallelism: int | None = Field(
        default=None, ge=1, le=10_000, description="Shards at once (default: all)."
    )
    retries_per_shard: int = Field(
        default=2, ge=0, le=10, description="Pod retries per shard (backoffLimitPerIndex)."
    )
    max_failed_shards: int = Field(
        default=0,
        ge=0,
        le=10_000,
        description="Shards allowed to fail before the stage fails (maxFailedIndexes).",
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        le=10,
        description="Attempts per stage; a new attempt runs only the uncommitted shards.",
    )


class Resources(ApiModel):
    """Per-pod resources of the worker Jobs."""

    gpus: int = Field(default=1, ge=0, le=16)
    gpu_resource_name: str = Field(
        default="nvidia.com/gpu", max_length=253, pattern=r"^[a-z0-9.\-]+/[a-z0-9.\-]+$"
    )
    cpu: Quantity = "4"
    memory: Quantity = "16Gi"
    shared_memory: Quantity | None = Field(default="2Gi", description="Size of /dev/shm for data loaders.")


class Toleration(ApiModel):
    key: str | None = _text(253, default=None)
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = _text(253, default=None)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, ge=0)


class Scheduling(ApiModel):
    """Where and how worker pods run."""

    image: str | None = Field(
        default=None, max_length=512, description="Worker image (default: the operator's)."
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    node_selector: dict[str, Annotated[str, Field(max_length=253)]] | None = Field(
        default=None, max_length=64
    )
    tolerations: list[Toleration] | None = Field(default=None, max_length=32)
    priority_class_name: str | None = _text(253, default=None)
    queue_name: str | None = Field(
        default=None,
        max_length=63,
        description="Kueue LocalQueue (becomes kueue.x-k8s.io/queue-name on Jobs).",
    )
    service_account_name: str | None = Field(
        default=None, max_length=253, description="Worker ServiceAccount (for IRSA / Workload Identity)."
    )


class Output(ApiModel):
    """Where artifacts go, and how to reach the store."""

    uri: OutputUri
    endpoint: str | None = Field(
        default=None, max_length=512, pattern=r"^https?://", description="S3 endpoint (MinIO, Ceph, ...)."
    )
    region: str | None = _text(64, default=None)
    credentials_secret: str | None = Field(
        default=None,
        max_length=253,
        description="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY keys "
        "(omit it for IRSA / Workload Identity).",
    )
    on_delete: Literal["Retain", "Delete"] = Field(
        default="Retain", description="What happens to the artifacts when the resource is deleted."
    )

    _v_uri = field_validator("uri")(lambda v: _check_storage_uri(v, allow_tiny=False))


class ModelHub(ApiModel):
    """Access to the Hugging Face hub (or a mirror)."""

    token_secret: str | None = Field(default=None, max_length=253, description="Secret with an HF_TOKEN key.")
    endpoint: str | None = Field(
        default=None, max_length=512, pattern=r"^https?://", description="HF_ENDPOINT."
    )


class RunPolicy(ApiModel):
    suspend: bool = Field(
        default=False, description="Stop the active Jobs; resuming continues where it stopped."
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="Wall-clock limit of the whole run."
    )
    startup_deadline_seconds: int | None = Field(
        default=None, ge=1, description="Fail if no pod runs within this time (stuck Pending / queued)."
    )
    ttl_seconds_after_finished: int | None = Field(
        default=86400,
        ge=0,
        description="Child Jobs are deleted this long after their results were folded into status.",
    )


_IMMUTABLE_HINT = "create a new resource (e.g. name-v2) to change it"


def _immutable(*fields: str) -> tuple[cel.CelRule, ...]:
    rules = []
    for f in fields:
        rules.append(
            Rule(
                f"has(self.{f}) == has(oldSelf.{f}) && (!has(self.{f}) || self.{f} == oldSelf.{f})",
                f"spec.{f} is immutable: {_IMMUTABLE_HINT}",
                field_path=f".{f}",
                transition=True,
            )
        )
    return tuple(rules)


# ---------------------------------------------------------------------------------- SyntheticDataset


class SyntheticDatasetSpec(ApiModel):
    """A synthetic dataset: label space, prompts, generator, filters, sharding and an output URI."""

    __cel_rules__ = (
        Rule(
            "!has(self.filter.realFiltering) || !self.filter.realFiltering.enabled || "
            "has(self.filter.realFiltering.source) || has(self.realGuidance)",
            "filter.realFiltering needs real shots: set filter.realFiltering.source or realGuidance",
            field_path=".filter.realFiltering",
        ),
        Rule(
            "!has(self.realGuidance) || self.realGuidance.shots > 0",
            "realGuidance.shots must be positive",
            field_path=".realGuidance.shots",
        ),
        *_immutable("labels", "prompts", "generator", "realGuidance", "filter", "output"),
        Rule(
            "self.sharding.shards == oldSelf.sharding.shards",
            f"spec.sharding.shards is immutable: {_IMMUTABLE_HINT}",
            field_path=".sharding.shards",
            transition=True,
        ),
    )

    labels: LabelSpace
    prompts: Prompts = Field(default_factory=Prompts)
    generator: Generator
    real_guidance: RealGuidance | None = None
    filter: Filter = Field(default_factory=Filter)
    sharding: Sharding = Field(default_factory=Sharding)
    resources: Resources = Field(default_factory=Resources)
    scheduling: Scheduling = Field(default_factory=Scheduling)
    output: Output
    model_hub: ModelHub | None = None
    run_policy: RunPolicy = Field(default_factory=RunPolicy)


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
    name: str = Field(max_length=253)
    shots: int
    seed: int
    variant: str | None = Field(default=None, max_length=63)
    state: Literal["Pending", "Running", "Succeeded", "Failed"] = "Pending"
    top1: float | None = None
    zero_shot_top1: float | None = None
    metrics: str | None = Field(default=None, max_length=1024, description="URI of the run's metrics.json.")


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
    datasets: list[PinnedDataset] = Field(default_factory=list, max_length=16)
    artifacts: ExperimentArtifacts = Field(default_factory=ExperimentArtifacts)


# ----------------------------------------------------------------------------------------- resources


class ObjectMeta(ApiModel):
    """The parts of metadata synthrec reads (the API server keeps the rest)."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=MAX_RESOURCE_NAME, pattern=_DNS_LABEL)
    namespace: str | None = Field(default=None, max_length=63)
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None


class _Resource(ApiModel):
    api_version: Literal["synthrec.io/v1alpha1"] = API_VERSION
    metadata: ObjectMeta


class SyntheticDataset(_Resource):
    kind: Literal["SyntheticDataset"] = "SyntheticDataset"
    spec: SyntheticDatasetSpec
    status: SyntheticDatasetStatus | None = None


class RecognitionExperiment(_Resource):
    kind: Literal["RecognitionExperiment"] = "RecognitionExperiment"
    spec: RecognitionExperimentSpec
    status: RecognitionExperimentStatus | None = None


Resource = SyntheticDataset | RecognitionExperiment

KINDS: dict[str, type[SyntheticDataset] | type[RecognitionExperiment]] = {
    "SyntheticDataset": SyntheticDataset,
    "RecognitionExperiment": RecognitionExperiment,
}


class KindInfo(BaseModel):
    kind: str
    plural: str
    singular: str
    short_names: list[str]
    spec: type[ApiModel]
    status: type[ApiModel]


KIND_INFO: dict[str, KindInfo] = {
    "SyntheticDataset": KindInfo(
        kind="SyntheticDataset",
        plural="syntheticdatasets",
        singular="syntheticdataset",
        short_names=["sds"],
        spec=SyntheticDatasetSpec,
        status=SyntheticDatasetStatus,
    ),
    "RecognitionExperiment": KindInfo(
        kind="RecognitionExperiment",
        plural="recognitionexperiments",
        singular="recognitionexperiment",
        short_names=["rexp"],
        spec=RecognitionExperimentSpec,
        status=RecognitionExperimentStatus,
    ),
}


def parse_resource(obj: dict[str, Any]) -> SyntheticDataset | RecognitionExperiment:
    """Parse one resource dict (from YAML or the API) into its model; raises pydantic.ValidationError."""
    kind = obj.get("kind")
    if kind not in KINDS:
        raise ValueError(
            f"unknown kind {kind!r}: synthrec knows {', '.join(sorted(KINDS))} (apiVersion {API_VERSION})"
        )
    return KINDS[kind].model_validate(obj)
