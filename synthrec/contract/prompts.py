"""``prompts.jsonl``: one prompt row per line, written by the prompts stage, split into work items by the
generate stage (synthrec.workers.workitems) and sampled by the report."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Literal

PromptSource = Literal["basic", "le", "fill"]
_SOURCES = ("basic", "le", "fill")


@dataclass(frozen=True)
class PromptRow:
    """One line of prompts.jsonl."""

    class_index: int
    class_name: str
    index: int  # position among the class's prompts
    prompt: str
    images: int  # images wanted from this prompt
    source: PromptSource  # basic template, language enhancement, or a fill for missing LE sentences

    def to_json(self) -> str:
        row = asdict(self)
        row["class"] = row.pop("class_index")
        return json.dumps(row, ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> PromptRow:
        """Parse one line; raises ValueError saying what is wrong."""
        raw = json.loads(line)
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        try:
            row = cls(
                class_index=raw["class"],
                class_name=raw["class_name"],
                index=raw["index"],
                prompt=raw["prompt"],
                images=raw["images"],
                source=raw["source"],
            )
        except KeyError as exc:
            raise ValueError(f"missing field {exc.args[0]!r}") from None
        for name in ("class_index", "index", "images"):
            value = getattr(row, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if not isinstance(row.prompt, str) or not isinstance(row.class_name, str):
            raise ValueError("prompt and class_name must be strings")
        if row.source not in _SOURCES:
            raise ValueError(f"source must be one of {', '.join(_SOURCES)}, got {row.source!r}")
        return row


def dump_rows(rows: Iterable[PromptRow]) -> bytes:
    return "".join(r.to_json() + "\n" for r in rows).encode()


def parse_rows(data: bytes, where: str) -> list[PromptRow]:
    """Rows of a prompts.jsonl; raises ValueError naming ``where`` and the line."""
    rows = []
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(PromptRow.from_json(line))
        except ValueError as exc:
            raise ValueError(f"{where} line {number}: {exc}") from None
    return rows
