"""``spec.json`` at a resource's output root: what the artifacts there are (kind, name, the resolved spec
and its hashes), written by the worker runtime (workers/runtime.py ``spec_document``) and read by
``synthrec status``, ``synthrec report`` and a later run with the same storage."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from synthrec.contract.base import Part, parse_document

# A Kubernetes object name (what metadata.name of a synthrec resource is): a DNS label.
_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class ResourceMeta(Part):
    name: str = Field(max_length=63, pattern=_NAME)
    namespace: str | None = Field(default=None, max_length=63, pattern=_NAME)


class ResourceDocument(Part):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    api_version: str = Field(alias="apiVersion")
    kind: Literal["SyntheticDataset", "RecognitionExperiment"]
    metadata: ResourceMeta
    synthrec: str | None = None  # the version that wrote it
    spec: dict[str, Any]  # validated against the kind's API model by whoever uses it
    spec_hash: str | None = Field(default=None, alias="specHash")
    hashes: dict[str, str] | None = None  # datasets: the stage hashes
    runs: list[str] | None = None  # experiments: the run names


def parse_resource_document(raw: bytes | str, where: str = "spec.json") -> ResourceDocument:
    """Parse a spec.json; DocumentError says where and what is wrong."""
    return parse_document(ResourceDocument, raw, where)
