"""The two resources (metadata, spec, status) and their kind registry."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from synthrec.api.base import _DNS_LABEL, API_VERSION, MAX_RESOURCE_NAME, ApiModel
from synthrec.api.dataset import SyntheticDatasetSpec
from synthrec.api.experiment import RecognitionExperimentSpec
from synthrec.api.status import RecognitionExperimentStatus, SyntheticDatasetStatus

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
