"""The ``transfer`` stage: evaluate a pre-trained backbone downstream, the paper's Tables 8-11.

The source is a pre-training run's folder (``runs/<run>/pretrain/``: its card names the backbone, its
``backbone.safetensors`` is checked against the card's sha256) or, for the rows without synthetic
pre-training, a backbone with an initialisation (scratch, timm, hf://, s3://, file://). Each requested
evaluation (``classification``: full fine-tuning, top-1; ``linear_probe``: frozen features, top-1;
``detection``: Faster R-CNN on VOC, AP50) runs in turn and commits ``runs/<run>/transfer/<kind>/``
(metrics.json, curve.json, then done.json); an evaluation already committed for this spec is not run
again. Impossible combinations (a ViT for detection) fail before any data is read.
"""

from __future__ import annotations

import logging
from typing import Any

from synthrec.contract.base import DocumentError
from synthrec.contract.layout import ExperimentLayout
from synthrec.contract.pretraining import TRANSFER_KINDS, TransferMetrics, parse_transfer_metrics
from synthrec.contract.summaries import TransferSummary
from synthrec.storage import Storage, write_marker
from synthrec.workers.runtime import ConfigError, DataError

log = logging.getLogger(__name__)

KINDS = tuple(TRANSFER_KINDS)  # the task's fields, in the order the evaluations run


def requested(task: Any) -> list[str]:
    return [k for k in KINDS if getattr(task, k) is not None]


def _committed(task: Any, storage: Storage, kind: str) -> TransferMetrics | None:
    from synthrec.workers.pretrain.pretrain import committed

    folder = ExperimentLayout.transfer(task.run, TRANSFER_KINDS[kind])
    if not committed(storage, folder, task.spec_hash):
        return None
    key = folder + "metrics.json"
    try:
        return parse_transfer_metrics(storage.read_bytes(key), storage.url(key))
    except DocumentError as exc:
        raise DataError(f"{exc}; delete {storage.uri}{folder} to redo that evaluation") from None


def _summary(task: Any, results: dict[str, TransferMetrics], storage: Storage) -> TransferSummary:
    out = TransferSummary(run=task.run, metrics=storage.uri + ExperimentLayout.transfer(task.run))
    for kind, metrics in results.items():
        if kind == "detection":
            out.ap50, out.ap50_voc07 = metrics.ap50, metrics.ap50_voc07
        else:
            setattr(out, f"{kind}_top1", metrics.top1)
    return out


def finished(task: Any, storage: Storage) -> TransferSummary | None:
    results = {}
    for kind in requested(task):
        metrics = _committed(task, storage, kind)
        if metrics is None:
            return None
        results[kind] = metrics
    return _summary(task, results, storage)


def typed_metrics(
    task: Any, kind: str, raw: dict[str, Any], source: dict[str, Any], world: int
) -> TransferMetrics:
    """The evaluation's result (classify.fine_tune / linear_probe, detection.train_and_test) as its
    typed document: the paper's numbers, per class, counts, the settings it ran with, the rest as notes."""
    numbers = ("top1", "top5", "ap50", "ap50_voc07", "ap", "ap75")
    counts = ("train_images", "test_images", "images", "objects", "detections", "skipped_objects")
    per_class = raw.get("per_class_ap50") if kind == "detection" else raw.get("per_class_top1")
    settings = ("epochs", "iterations", "batch_size", "lr", "milestones", "image_size", "norm", "feature_dim")
    skip = {*numbers, *counts, *settings, "kind", "classes", "per_class_ap50", "per_class_top1"}
    return TransferMetrics(
        run=task.run,
        kind=TRANSFER_KINDS[kind],
        spec_hash=task.spec_hash,
        world_size=world,
        classes=list(raw["classes"]),
        **{k: raw.get(k) for k in numbers},
        per_class=list(per_class or []),
        counts={k: int(raw[k]) for k in counts if raw.get(k) is not None},
        settings={k: raw[k] for k in settings if k in raw},
        source=source,
        notes={k: v for k, v in raw.items() if k not in skip},
    )


def source_backbone(ctx: Any) -> tuple[str, dict[str, Any] | None, list[float], list[float], dict[str, Any]]:
    """(timm name, backbone state or None for scratch, mean, std, provenance) of the task's source."""
    from synthrec.workers.pretrain import backbones
    from synthrec.workers.pretrain.augment import IMAGENET_MEAN, IMAGENET_STD
    from synthrec.workers.pretrain.pretrain import load_backbone_state, read_card

    src = ctx.task.source
    if src.pretrain is not None:
        folder = ctx.open(src.pretrain)
        card = read_card(folder)
        state = load_backbone_state(folder, card)
        summary = card.model_dump(
            mode="json", include={"backbone", "objective", "steps", "data", "files", "init"}
        )
        info = {"pretrain": src.pretrain, "card": summary}
        return card.backbone, state, card.mean, card.std, info
    probe = backbones.create_model(src.backbone, num_classes=0)
    opts = {"endpoint": ctx.task.output.endpoint, "region": ctx.task.output.region}
    loaded = backbones.load_weights(probe, src.backbone, src.init, field="source.init", storage_opts=opts)
    cfg = probe.pretrained_cfg
    mean, std = list(cfg.get("mean") or IMAGENET_MEAN), list(cfg.get("std") or IMAGENET_STD)
    state = backbones.backbone_state(probe) if loaded is not None else None
    return (
        src.backbone,
        state,
        mean,
        std,
        {"backbone": src.backbone, "init": loaded.as_dict() if loaded else "scratch"},
    )


def check_combinations(task: Any, backbone_name: str) -> None:
    """Refuse what cannot work before any data is read (the detector needs a hierarchical backbone)."""
    from synthrec.workers.pretrain import backbones

    if task.detection is not None:
        problem = backbones.detection_problem(backbones.create_model(backbone_name, num_classes=0))
        if problem:
            raise ConfigError(f"detection: {problem}; use classification or linear_probe for this backbone")


def run(ctx: Any) -> TransferSummary:
    import torch

    from synthrec.workers.pretrain import backbones, checkpoint, classify, detection

    task, storage = ctx.task, ctx.storage
    name, state, mean, std, provenance = source_backbone(ctx)
    check_combinations(task, name)
    results: dict[str, TransferMetrics] = {}
    for kind in requested(task):
        done = _committed(task, storage, kind)
        if done is not None:
            results[kind] = done
            continue
        folder = ExperimentLayout.transfer(task.run, TRANSFER_KINDS[kind])
        ckpts = checkpoint.Checkpoints(storage, folder + "checkpoints", task.spec_hash, keep=1)
        cfg = getattr(task, kind)
        torch.manual_seed(task.seed)
        if kind == "detection":
            out = detection.train_and_test(ctx, cfg, name, state, mean, std, ckpts)
        else:
            from synthrec.api.labels import resolve_labels

            classes = len(resolve_labels(cfg.labels))
            model = backbones.create_model(
                name, num_classes=classes if kind == "classification" else 0, img_size=cfg.image_size
            )
            if state is not None:
                backbones.apply_state(model, state, source=provenance.get("pretrain", name), field="source")
            if kind == "classification":
                out = classify.fine_tune(ctx, cfg, model, mean, std, ckpts)
            else:
                out = classify.linear_probe(ctx, cfg, model, mean, std)
        metrics = typed_metrics(task, kind, out["metrics"], provenance, ctx.rank.world)
        if ctx.rank.is_main:
            storage.write_json(folder + "metrics.json", metrics.document())
            storage.write_json(folder + "curve.json", {"points": out["curve"]})
            write_marker(storage, folder + "done.json", spec_hash=task.spec_hash, kind=kind)
        ctx.rank.barrier()
        results[kind] = metrics
        log.info("transfer %s of %s: %s %s", kind, task.run, metrics.kind, metrics.headline)
    return _summary(task, results, storage)
