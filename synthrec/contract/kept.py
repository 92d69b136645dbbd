"""``index/kept.jsonl``: the samples the reduce stage kept, one row per line (what an experiment trains
on and the report shows). Written by workers/reduce.py from :class:`KeptRow`."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field

from synthrec.contract.base import Part, parse_document


class KeptRow(Part):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    shard: int = Field(ge=0)
    key: str = Field(min_length=1, max_length=200)  # the sample's WebDataset key in its shard
    class_index: int = Field(alias="class", ge=0)
    class_name: str | None = None
    score: float | None = None  # CLIP probability of the intended class
    passed: bool | None = None  # passed the CLIP filter threshold; None: the filter is disabled
    features: str | None = None  # the shard's features file and this sample's row in it
    row: int | None = Field(default=None, ge=0)

    def document(self) -> dict[str, Any]:
        """The line's object: every field, except the features reference of a sample that has none."""
        out = self.model_dump(mode="json", by_alias=True)
        for name in ("features", "row"):
            if out[name] is None:
                del out[name]
        return out


def parse_kept_row(line: str) -> KeptRow:
    """One line of kept.jsonl; DocumentError (a ValueError) says what is wrong."""
    return parse_document(KeptRow, line, "index/kept.jsonl row")
