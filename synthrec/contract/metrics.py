"""``runs/<run>/metrics.json``: the result of one run of a RecognitionExperiment.

The train worker builds :class:`RunMetrics`; the report, ``synthrec status``, the local runner's summary and
a skipped re-run parse it with :func:`parse_metrics`. Accuracies are percentages.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from synthrec.contract.base import Part, parse_document

METRICS_VERSION = 1


class ClassTop1(Part):
    index: int
    name: str
    count: int  # test images of the class
    top1: float | None = None
    zero_shot_top1: float | None = None


class Schedule(Part):
    warmup_steps: int
    kind: str


class RunCounts(Part):
    synthetic: int
    real_train: int
    real_train_replaced: int
    test: int
    test_skipped: int
    validation: int
    validation_skipped: int


class DatasetUse(Part):
    name: str | None = None
    uri: str
    digest: str
    kept: int


class CacheUse(Part):
    key: str
    hit: bool


class Validation(Part):
    """Where a run's validation set came from (never the test set)."""

    source: Literal["data.validation", "held-out shots"]
    images: int
    per_class: int | None = None  # held-out shots per class (trained without them)


class RunMetrics(Part):
    version: Literal[1] = METRICS_VERSION
    run: str
    index: int
    variant: str | None = None
    # classifier-tuning | zero-shot | tip-adapter | tip-adapter-f | coop: with shots and variant, what a
    # plot of Figure 1 needs to draw one curve per method
    method: str = "classifier-tuning"
    spec_hash: str
    shots: int
    seed: int
    seeds: dict[str, int]
    top1: float | None  # test top-1 of the model ``selection`` picks
    top1_last: float | None = None  # ... of the last epoch's model
    top1_best_validation: float | None = None  # ... of the best epoch on the validation set (if any)
    zero_shot_top1: float | None
    trained: bool
    selection: str
    selected_epoch: int | None = None
    best_validation_epoch: int | None = None
    validation_top1: float | None = None  # validation top-1 of the reported model
    validation: Validation | None = None
    per_class: list[ClassTop1]
    confusion: str  # key of runs/<run>/confusion.json (synthrec.contract.confusion)
    classes: list[str]
    epochs: int
    epochs_run: int
    phases: list[dict[str, Any]]
    steps: int
    lr: float | None  # the learning rate the optimiser used (the plan fills the default); None: no training
    schedule: Schedule
    classifier_tuning: dict[str, Any] | None = None  # classifier-tuning runs: the resolved settings
    settings: dict[str, Any] | None = None  # the other methods: theirs (tip_adapter or coop), resolved
    details: dict[str, Any] = Field(default_factory=dict)  # what a method found (Tip-Adapter's alpha, beta)
    backbone: dict[str, Any]
    head_templates: list[str]
    counts: RunCounts
    datasets: list[DatasetUse]
    feature_cache: dict[str, CacheUse]
    device: str
    timing: dict[str, float]
    # Where the run was logged besides its own artifacts (workers.tracking): tensorboard, mlflow, wandb.
    tracking: dict[str, Any] = Field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def parse_metrics(raw: bytes | str, where: str = "metrics.json") -> RunMetrics:
    """Parse a metrics.json; DocumentError says where and what is wrong."""
    return parse_document(RunMetrics, raw, where)
