"""API blocks both resources share: the label space, real data, pod resources, scheduling, the output
location, the model hub, the run policy and the immutability rules."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from synthrec.api import cel
from synthrec.api.base import (
    MAX_CLASSES,
    ApiModel,
    OutputUri,
    Quantity,
    Rule,
    ShmSize,
    StorageUri,
    _check_storage_uri,
    _check_text,
    _text,
)

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
        Rule(
            "!has(self.filterTemplate) || self.filterTemplate.contains('{c}')",
            "labels.filterTemplate needs a {c} placeholder for the class name",
            field_path=".filterTemplate",
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
        description="CLIP prompt templates with {c} for the zero-shot head and soft targets (and the CLIP "
        "Filter with filter.prompts head-templates); default: the preset's, i.e. the paper's head-init set.",
    )
    prompt_template: str | None = _text(
        300,
        default=None,
        description="Basic-strategy generation prompt with {} for the class name "
        "(default: the preset's, 'a photo of a {}.' otherwise).",
    )
    filter_template: str | None = _text(
        300,
        default=None,
        description="The CLIP Filter's prompt with {c} for the generation name, one per class (default: the "
        "preset's, the official filter's where it has one, e.g. EuroSAT 'a centered satellite photo of a "
        "{c}.'; 'a photo of a {c}.' otherwise).",
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


# ------------------------------------------------------------------------------------------ execution


class Resources(ApiModel):
    """Per-pod resources of the worker Jobs."""

    gpus: int = Field(default=1, ge=0, le=16)
    gpu_resource_name: str = Field(
        default="nvidia.com/gpu", max_length=253, pattern=r"^[a-z0-9.\-]+/[a-z0-9.\-]+$"
    )
    cpu: Quantity = "4"
    memory: Quantity = "16Gi"
    shared_memory: ShmSize | None = Field(
        default="auto",
        description="Size of /dev/shm for data loaders: auto sizes it from the stage's batch size, the "
        "loader workers the cpu request gives and the model's input size (uint8 images; at most half of "
        "memory, which it counts against); a quantity is used as is; null mounts none.",
    )


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
        default="Retain",
        description="What happens to the artifacts when the resource is deleted: Retain keeps them; Delete "
        "deletes the objects its workers wrote (recorded under its uid) from a Job in its namespace with "
        "its credentials, never other objects under the URI, a bucket root, or another resource's data.",
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
