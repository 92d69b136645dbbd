"""``manifest.json``, the dataset card the reduce stage writes last: the dataset's own commit marker (its
``spec_hash``) and what experiments pin (the sha256 of its bytes).

The reduce worker builds a :class:`DatasetManifest`; the train worker, the report, ``synthrec status`` and
the local runner parse it with :func:`parse_manifest`.
"""

from __future__ import annotations

from typing import Any, Literal

from synthrec.contract.base import Part, parse_document
from synthrec.plan.tasks import ResourceRef

MANIFEST_VERSION = 1
MANIFEST_KIND = "SyntheticDatasetManifest"


class ManifestLabels(Part):
    source: str
    classes: list[str]
    head_names: list[str]
    templates: list[str]


class ModelInfo(Part):
    """A model as loaded: its reference and the revision that was used."""

    model: str | None = None
    pretrained: str | None = None
    revision: str | None = None


class PromptModel(Part):
    strategy: str
    model: str | None = None


class ManifestModels(Part):
    prompts: PromptModel
    generator: ModelInfo
    filter_clip: ModelInfo | None = None


class RealFilteringInfo(Part):
    rule: str
    k: int
    source: str
    shots: int
    seed: int
    shot_uris: list[str]
    unreadable_shots_replaced: int
    dropped: int
    order: str


class FilterPromptsInfo(Part):
    """The prompts the CLIP Filter scored with (synthrec.api.labels.FilterPrompts.describe)."""

    mode: str  # filter-template (the official filter) | head-templates
    names: str
    templates: list[str]
    example: list[str]


class RealGuidanceStart(Part):
    """Where Real Guidance's img2img started: the strength used and the signal level it reached, next to
    the paper's level it was matched to (synthrec.noise_levels)."""

    strength: float
    strength_source: str  # explicit | matched
    target_alpha_bar: float | None = None
    alpha_bar: float
    start_timestep: float
    steps_run: int
    steps: int
    scheduler: str | None = None
    shots: int


class Generation(Part):
    """Generation settings as run: the pipeline's size, the stored size and Real Guidance's start."""

    steps: int
    guidance_scale: float
    generation_resolution: int | None = None
    generation_resolution_source: str
    resolution: int
    resize: str | None = None
    real_guidance: RealGuidanceStart | None = None


class ManifestFilter(Part):
    enabled: bool
    note: str | None = None
    threshold: float | None = None
    threshold_rule: str | None = None
    keep_per_class: int | None = None
    selection: str | None = None
    prompts: FilterPromptsInfo | None = None
    seed: int
    real_filtering: RealFilteringInfo | None = None


class SoftTargets(Part):
    """Where the filter's zero-shot head logits are, from which soft targets follow at an experiment's
    temperature (``classifierTuning.softTarget.temperature``). Cards written before the dataset spec lost
    ``filter.softTargetTemperature`` recorded that unused value as ``temperature``."""

    temperature: float | None = None
    formula: str
    logit_scale: float | None = None
    source: str


class Counts(Part):
    generated: int
    corrupt: int
    real_filtered: int
    passed: int
    kept: int
    rejected: int
    accept_rate: float | None = None
    keep_rate: float | None = None


class ClassCounts(Part):
    index: int
    name: str
    generated: int
    corrupt: int
    passed: int
    kept: int
    kept_below_threshold: int
    accept_rate: float | None = None
    keep_rate: float | None = None
    real_filtered: int = 0


class IndexRef(Part):
    """``index/kept.jsonl``: where, its sha256 and its rows."""

    key: str
    sha256: str
    rows: int
    per_shard: str | None = None  # how the per-shard indexes are found (manifests before them: None)


class ShardRecord(Part):
    shard: int
    tar: str
    tar_sha256: str | None = None
    tar_size: int | None = None
    features: str | None = None
    features_sha256: str | None = None
    images: int
    corrupt: int
    generate_seconds: dict[str, float] | None = None
    filter_seconds: dict[str, float] | None = None
    # The shard's own index (index/shards/gen-NNNNN.jsonl: every decodable sample with its kept flag) and
    # its per-class counts ({"2": 17}), from which a pre-training size cap is planned without reading a
    # shard. None in manifests written before the per-shard index existed.
    index: str | None = None
    index_sha256: str | None = None
    kept: int | None = None
    classes: dict[str, int] | None = None
    kept_classes: dict[str, int] | None = None


class DatasetManifest(Part):
    kind: Literal["SyntheticDatasetManifest"] = MANIFEST_KIND
    version: Literal[1] = MANIFEST_VERSION
    resource: ResourceRef
    spec_hash: str  # the reduce stage's hash: the dataset is committed for this spec
    hashes: dict[str, str]
    created_at: str
    labels: ManifestLabels
    models: ManifestModels
    generation: Generation | None = None  # absent in manifests of fake or older writers
    filter: ManifestFilter
    soft_targets: SoftTargets | None = None
    counts: Counts
    per_class: list[ClassCounts]
    index: IndexRef
    shards: list[ShardRecord]
    shards_total: int
    shards_missing: list[int]
    timings: dict[str, float]

    def document(self) -> dict[str, Any]:
        """The JSON document to write (every field, None included, as the card shows them)."""
        return self.model_dump(mode="json")


def parse_manifest(raw: bytes | str, where: str = "manifest.json") -> DatasetManifest:
    """Parse a manifest.json; DocumentError says where and what is wrong."""
    return parse_document(DatasetManifest, raw, where)
