"""The artifacts of a pre-training experiment (``runs/<run>/pretrain/`` and ``runs/<run>/transfer/<kind>/``).

The pretrain worker writes :class:`PretrainCard` (``card.json``: what the backbone is, what the transfer
stage reads) and :class:`PretrainMetrics` (``metrics.json``); the transfer worker writes one
:class:`TransferMetrics` per evaluation. ``synthrec status``, the local runner's summary and the report
parse them with :func:`parse_pretrain_metrics` and :func:`parse_transfer_metrics`; accuracies and APs are
percentages.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from synthrec.contract.base import Part, parse_document

PRETRAIN_VERSION = 1
CARD_KIND = "SynthrecPretrainCard"
TransferKind = Literal["classification", "linear-probe", "detection"]
# The evaluation's folder under runs/<run>/transfer/ and the transfer task's field that asks for it.
TRANSFER_KINDS: dict[str, TransferKind] = {
    "classification": "classification",
    "linear_probe": "linear-probe",
    "detection": "detection",
}


class DataUse(Part):
    """What a pre-training run read: the selection, its size cap and the pinned manifests."""

    images: str  # kept | all
    available: int  # images of the selection before the cap
    selected: int  # images per epoch after the cap
    cap_seed: int
    shards: int
    classes: int
    epoch_samples: int  # with real images mixed in: the synthetic selection plus the real share
    manifest_digests: list[str]
    real: dict[str, Any] | None = None
    datasets: list[dict[str, Any]] = Field(default_factory=list)  # uri, name, manifest_sha256 (card only)


class PretrainMetrics(Part):
    version: Literal[1] = PRETRAIN_VERSION
    run: str
    objective: str
    backbone: str
    steps: int
    steps_per_epoch: int
    epochs: float
    images_seen: int
    first_loss: float | None = None
    final_loss: float | None = None
    seconds_training: float
    images_per_s: float | None = None
    world_size: int
    precision: str
    device: str
    recipe: dict[str, Any]
    data: DataUse
    resumed_at: list[int] = Field(default_factory=list)  # steps the run was resumed at (provenance)

    def document(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class PretrainCard(Part):
    """The pre-trained backbone's card: transfer reads it to rebuild the model and check the weights."""

    kind: Literal["SynthrecPretrainCard"] = CARD_KIND
    version: Literal[1] = PRETRAIN_VERSION
    backbone: str
    objective: str
    num_features: int
    classes: list[str] | None = None  # supervised: the head's classes (not exported)
    image_size: int
    mean: list[float]
    std: list[float]
    init: dict[str, Any]
    data: DataUse
    steps: int
    epochs: float
    global_batch: int
    world_size: int
    recipe: dict[str, Any]
    moco: dict[str, Any] | None = None
    precision: str
    final_loss: float | None = None
    files: dict[str, Any]  # backbone.safetensors sha256, the final checkpoint's key and sha256
    spec_hash: str
    versions: dict[str, str]

    def document(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class TransferMetrics(Part):
    """One downstream evaluation of one run."""

    version: Literal[1] = PRETRAIN_VERSION
    run: str
    kind: TransferKind
    spec_hash: str
    world_size: int
    classes: list[str]
    top1: float | None = None  # classification, linear-probe
    top5: float | None = None
    ap50: float | None = None  # detection: COCO-style (101-point) AP at IoU 0.5
    ap50_voc07: float | None = None  # detection: the VOC2007 11-point AP50 (the paper's number)
    ap: float | None = None  # detection: AP over IoU 0.50:0.95
    ap75: float | None = None
    per_class: list[float | None]  # top-1 (classification) or AP50 (detection) of each class
    counts: dict[str, int]  # train_images, test_images; detection: images, objects, detections, ...
    settings: dict[str, Any]  # what the evaluation ran with (epochs or iterations, batch, lr, ...)
    source: dict[str, Any]  # the backbone: a pre-training run's card, or the backbone and its init
    notes: dict[str, Any] = Field(default_factory=dict)  # protocol, evaluator, data descriptions

    def document(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @property
    def headline(self) -> float | None:
        """The number of the paper's tables: top-1, or the VOC07 AP50 of detection."""
        return self.ap50_voc07 if self.kind == "detection" else self.top1


def parse_card(raw: bytes | str, where: str = "card.json") -> PretrainCard:
    return parse_document(PretrainCard, raw, where)


def parse_pretrain_metrics(raw: bytes | str, where: str = "metrics.json") -> PretrainMetrics:
    return parse_document(PretrainMetrics, raw, where)


def parse_transfer_metrics(raw: bytes | str, where: str = "metrics.json") -> TransferMetrics:
    return parse_document(TransferMetrics, raw, where)
