"""The SyntheticDataset spec: prompts, generator, Real Guidance, the CLIP filter and sharding."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from synthrec.api.base import ApiModel, ModelRefStr, Rule, _check_model_ref, _text
from synthrec.api.common import (
    _IMMUTABLE_HINT,
    LabelSpace,
    ModelHub,
    Output,
    RealData,
    Resources,
    RunPolicy,
    Scheduling,
    _immutable,
)
from synthrec.noise_levels import paper_alpha_bar

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
    """The text-to-image model: any diffusers text-to-image pipeline. The paper used GLIDE, which is not in
    diffusers (base 64 px, 100 respaced DDPM steps, guidance 3.0, upsampled to 256 px; 10 images per
    prompt). Images are generated at the pipeline's native size and stored at ``resolution``."""

    __cel_rules__ = (
        Rule(
            "self.resolution % 8 == 0",
            "generator.resolution must be a multiple of 8",
            field_path=".resolution",
        ),
        Rule(
            "!has(self.generationResolution) || self.generationResolution % 8 == 0",
            "generator.generationResolution must be a multiple of 8",
            field_path=".generationResolution",
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
    resolution: int = Field(
        default=256,
        ge=64,
        le=2048,
        description="Square size the images are stored at (paper: 256, GLIDE's upsampler output).",
    )
    generation_resolution: int | None = Field(
        default=None,
        ge=64,
        le=2048,
        description="Square size the pipeline generates at; omit for its native size (denoiser sample size "
        "x VAE scale factor: 512 for SD 2.1-base, 1024 for SDXL). Generated images are resized to "
        "resolution with antialiasing (Lanczos); Real Guidance's real shots enter at this size.",
    )
    images_per_prompt: int = Field(default=10, ge=1, le=10_000, description="Images per prompt (paper: 10).")
    images_per_class: int | None = Field(
        default=None,
        le=1_000_000,
        description="If set, images per class spread evenly over the class's prompts (overrides "
        "imagesPerPrompt; the paper's 2000 = 200 sentences x 10).",
    )
    batch_size: int = Field(
        default=16,
        ge=1,
        le=1024,
        description="Images per pipeline call (with batchSizeSearch: the largest size tried).",
    )
    batch_size_search: bool | None = Field(
        default=None,
        description="Measure images/s at batch sizes 1, 2, 4, ... up to batchSize on the shard's first "
        "batches (their images are kept) and generate the rest at the fastest; the choice is stored in the "
        "output and reused by later pods on the same model, device and settings.",
    )
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        default="auto", description="auto: float16 on GPU, float32 on CPU."
    )
    negative_prompt: str | None = _text(1000, default=None)
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Base seed; every image derives its own.")
    compile: bool = Field(
        default=False,
        description="torch.compile the denoiser and the VAE decoder; the compiled artifacts are kept in the "
        "output (models/compile-cache/), with the C++ kernels a CPU pod built (per CPU model), so later pods "
        "load instead of compiling.",
    )
    jpeg_quality: int = Field(default=95, ge=50, le=100)

    _v_model = field_validator("model")(lambda v: _check_model_ref(v))


class RealGuidance(ApiModel):
    """Real Guidance (RG, few-shot): start denoising from the noised real shots (SDEdit-style img2img).

    The noise level is a signal level (alpha-bar), the quantity that carries over between schedules: by
    default the paper's level for ``shots`` (GLIDE's cosine schedule where the official code starts), and
    the generate stage picks the img2img strength that starts the generator's own scheduler closest to it
    (synthrec.noise_levels). ``synthrec plan`` and the dataset card show the strength and level used."""

    __cel_rules__ = (
        Rule(
            "!has(self.strength) || !has(self.alphaBar)",
            "set at most one of realGuidance.strength and realGuidance.alphaBar",
            field_path=".strength",
        ),
    )

    source: RealData
    shots: int = Field(default=16, ge=1, le=1000, description="Real images per class used as guidance.")
    alpha_bar: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="Signal level (alpha-bar) img2img starts from; the strength that reaches it on the "
        "generator's scheduler is chosen. Default: the paper's level for shots, GLIDE's cosine-schedule "
        "alpha-bar at the official start (16:0.946, 8:0.905, 4:0.728, 2:0.655, 1:0.502).",
    )
    strength: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Explicit img2img strength (diffusers runs int(steps x strength) steps); overrides the "
        "alpha-bar matching.",
    )
    images_per_class: int = Field(
        default=800, ge=1, le=1_000_000, description="Synthetic images per class (paper: 800 for every M)."
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Seed for picking the shots.")

    def target_alpha_bar(self) -> float | None:
        """The level to match; None when an explicit strength is set."""
        if self.strength is not None:
            return None
        return self.alpha_bar if self.alpha_bar is not None else paper_alpha_bar(self.shots)


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
    """CLIP Filter (CF, paper §3.1): keep K images per class whose CLIP probability of the intended class
    (softmax over the classes' prompts, ``prompts``) beats the threshold. The filter also stores its zero-shot
    head's logits (head templates and names) with each image; the soft targets' temperature is the
    experiment's (``classifierTuning.softTarget.temperature``), whose teacher is its own backbone's head."""

    __cel_rules__ = (
        Rule(
            "!has(self.threshold) || (self.threshold >= 0.0 && self.threshold <= 1.0)",
            "filter.threshold is a probability between 0 and 1 (omit it for the paper's 1/C)",
            field_path=".threshold",
        ),
    )

    enabled: bool = True
    clip: ClipModel = Field(default_factory=ClipModel, description="Scorer (paper: CLIP RN50).")
    prompts: Literal["filter-template", "head-templates"] = Field(
        default="filter-template",
        description="Texts the images are scored against. filter-template (the official filter): one prompt "
        "per class, labels.filterTemplate (the preset's) with the generation name; head-templates: the "
        "zero-shot head's template ensemble with the head names.",
    )
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
    batch_size: int = Field(default=256, ge=1, le=8192)
    decode: Literal["full", "reduced", "gpu"] | None = Field(
        default=None,
        description="How images are decoded for scoring. full: every pixel on the CPU, then the model's "
        "preprocessing (the official code's way); reduced: JPEGs decoded at the smallest DCT scale that "
        "still covers the model's input (PIL draft; the same as full below twice the input size); gpu: "
        "JPEGs decoded and resized on the GPU (nvJPEG). Omit for gpu on a GPU, reduced elsewhere.",
    )


# ------------------------------------------------------------------------------------------ execution


class ModelMirror(ApiModel):
    """Where the dataset's pods load their models from (synthrec.workers.mirror): the prompts stage pins
    every model to a revision and copies it once, instead of every pod downloading it from the hub."""

    target: Literal["auto", "output", "cache", "off"] = Field(
        default="auto",
        description="output: a copy under the dataset's output (models/), fetched by each pod from the "
        "object store; cache: a copy in the pods' /cache when it is one shared volume (the operator's worker "
        "cache volume), loaded in place; off: each pod resolves the references itself. auto: output for "
        "s3:// outputs, off for file:// ones. file:// models are pinned, never copied.",
    )


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
    order: Literal["class", "interleaved"] = Field(
        default="class",
        description="Which images a shard holds. class: a contiguous run of the class-major order, so a "
        "shard holds one or a few classes (fine for classifier tuning, which reads every shard). "
        "interleaved: every shards-th image, so every shard holds every class evenly; use it for "
        "pre-training data, whose loader reads a few shards at a time and would otherwise see a few "
        "classes per batch. The images are the same either way.",
    )
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
    model_mirror: ModelMirror | None = None
    run_policy: RunPolicy = Field(default_factory=RunPolicy)
