"""``runs/<run>/curve.json``: a run's training curve, per epoch and per (strided) step, as
workers/train.py writes it from workers/tuning.py's records; the report plots it."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from synthrec.contract.base import Part, parse_document


class CurveEpoch(Part):
    epoch: int
    phase: str | None = None
    loss: float
    lr: float | None = None
    val_top1: float | None = None


class CurveStep(Part):
    step: int
    loss: float
    lr: float | None = None
    syn: float | None = None  # the synthetic and real parts of a mixed batch's loss
    real: float | None = None


class TrainingCurve(Part):
    epochs: list[CurveEpoch]
    steps: list[CurveStep]
    step_stride: int = Field(default=1, ge=1)
    phases: list[dict[str, Any]] = Field(default_factory=list)

    def document(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def parse_curve(raw: bytes | str, where: str = "curve.json") -> TrainingCurve:
    """Parse a curve.json; DocumentError says where and what is wrong."""
    return parse_document(TrainingCurve, raw, where)
