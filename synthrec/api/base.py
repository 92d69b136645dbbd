"""The base of every API model: camelCase on the wire, unknown fields rejected, CEL rules enforced, and
the validated string types (URIs, model references, DNS labels, quantities) the resources share."""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from synthrec.api import cel
from synthrec.storage.uris import (
    MODEL_REF_PATTERN,
    OUTPUT_URI_PATTERN,
    STORAGE_URI_PATTERN,
    VOC_URI_PATTERN,
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
MAX_PINNED_DATASETS = 128  # bounds status.datasets: an experiment's distinct synthetic datasets
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


def _check_storage_uri(
    value: str | None, *, allow_tiny: bool = True, tiny_set: Literal["real", "voc"] = "real"
) -> str | None:
    if value is not None:
        try:
            parse_storage_uri(value, allow_tiny=allow_tiny, tiny_set=tiny_set)
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
VocUri = Annotated[
    str,
    Field(
        max_length=1024,
        pattern=VOC_URI_PATTERN,
        description="A PASCAL VOC folder: s3://bucket/prefix/ or file:///absolute/path/ (tiny://world/voc is "
        "the toy world's).",
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
# A quantity, or "auto" (sized by the operator: synthrec.plan.shm).
ShmSize = Annotated[str, Field(max_length=64, pattern=r"^auto$|" + _QUANTITY)]
