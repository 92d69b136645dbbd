"""A generated sample's ``<key>.json`` in its shard tar (workers/generate.py writes it; WebDataset users
read it too, so readers take the fields they need and ignore the rest)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from synthrec.contract.base import parse_document


class SampleMeta(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    class_index: int = Field(alias="class", ge=0)
    class_name: str | None = None
    prompt: str = ""


def parse_sample_meta(raw: bytes | str) -> SampleMeta:
    """DocumentError (a ValueError) when ``raw`` is not a sample's JSON."""
    return parse_document(SampleMeta, raw, "sample json")
