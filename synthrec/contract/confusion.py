"""Confusion matrices as a run stores them (``runs/<run>/confusion.json``), and what the report reads.

Stored sparse, as ``[true, predicted, count]`` for each non-zero cell: a dense ImageNet matrix is a million
cells (megabytes of JSON per run), while a test set has at most one non-zero cell per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field, model_validator

from synthrec.contract.base import Part, parse_document

FORMAT = "sparse: [true class, predicted class, count] for each non-zero cell"


def sparse(matrix: Sequence[Sequence[int]]) -> list[list[int]]:
    return [[t, p, int(n)] for t, row in enumerate(matrix) for p, n in enumerate(row) if n]


def dense(cells: Sequence[Sequence[int]], classes: int) -> list[list[int]]:
    matrix = [[0] * classes for _ in range(classes)]
    for t, p, n in cells:
        matrix[t][p] += n
    return matrix


def document(
    classes: Sequence[str], test: Sequence[Sequence[int]], zero_shot: Sequence[Sequence[int]]
) -> dict[str, Any]:
    """The file's content: the trained head's and the zero-shot classifier's matrices on the test split."""
    return {"classes": list(classes), "format": FORMAT, "test": sparse(test), "zero_shot": sparse(zero_shot)}


Count = Annotated[int, Field(ge=0)]
Cell = tuple[Count, Count, Count]  # true class, predicted class, images


class ConfusionDocument(Part):
    """The parsed file: cells name classes of ``classes`` only."""

    classes: list[str]
    format: str = FORMAT
    test: list[Cell]
    zero_shot: list[Cell] = Field(default_factory=list)

    @model_validator(mode="after")
    def _cells_name_classes(self) -> ConfusionDocument:
        n = len(self.classes)
        for name in ("test", "zero_shot"):
            for t, p, _ in getattr(self, name):
                if t >= n or p >= n:
                    raise ValueError(f"{name} has a cell for class {max(t, p)}, but there are {n} classes")
        return self

    def document(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def parse_confusion(raw: bytes | str, where: str = "confusion.json") -> ConfusionDocument:
    """Parse a confusion.json; DocumentError says where and what is wrong."""
    return parse_document(ConfusionDocument, raw, where)


@dataclass(frozen=True)
class Confusion:
    true: str
    predicted: str
    count: int
    share: float  # of the true class's test images, percent
    zero_shot_count: int


def most_confused(doc: dict[str, Any], limit: int = 10) -> list[Confusion]:
    """The off-diagonal cells with the most test images, with the zero-shot classifier's count beside them."""
    classes = doc["classes"]
    totals = [0] * len(classes)
    for t, _, n in doc["test"]:
        totals[t] += n
    zero_shot = {(t, p): n for t, p, n in doc.get("zero_shot") or []}
    off = sorted((c for c in doc["test"] if c[0] != c[1]), key=lambda c: (-c[2], c[0], c[1]))
    return [
        Confusion(classes[t], classes[p], n, 100.0 * n / totals[t], zero_shot.get((t, p), 0))
        for t, p, n in off[:limit]
    ]
