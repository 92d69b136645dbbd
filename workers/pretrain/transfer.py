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

from synthrec.contract.layout import ExperimentLayout
from synthrec.contract.summaries import TransferSummary
from synthrec.storage import Storage, write_marker
from synthrec.workers.runtime import ConfigError

log = logging.getLogger(__name__)

KINDS = ("classification", "linear_probe", "detection")
FOLDERS = {"classification": "classification", "linear_probe": "linear-probe", "detection": "detection"}


def requested(task: Any) -> list[str]:
    return [k for k in KINDS if getattr(task, k) is not None]


def _committed(task: Any, storage: Storage, kind: str) -> dict[str, Any] | None:
    from synthrec.workers.pretrain.pretrain import committed

    folder = ExperimentLayout.transfer(task.run, FOLDERS[kind])
    return storage.read_json(folder + "metrics.json") if committed(storage, folder, task.spec_hash) else None


def _summary(task: Any, results: dict[str, dict[str, Any]], storage: Storage) -> TransferSummary:
    out = TransferSummary(run=task.run, metrics=storage.uri + ExperimentLayout.transfer(task.run))
    for kind, metrics in results.items():
        if kind == "detection":
            out.ap50, out.ap50_voc07 = metrics["ap50"], metrics["ap50_voc07"]
        else:
            setattr(out, f"{kind}_top1", metrics["top1"])
    return out


def finished(task: Any, storage: Storage) -> TransferSummary | None:
    results = {}
    for kind in requested(task):
        metrics = _committed(task, storage, kind)
        if metrics is None:
            return None
        results[kind] = metrics
    return _summary(task, results, storage)


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
        info = {
            "pretrain": src.pretrain,
            "card": {k: card.get(k) for k in ("backbone", "objective", "steps", "data", "files", "init")},
        }
        return card["backbone"], state, card["mean"], card["std"], info
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
    results: dict[str, dict[str, Any]] = {}
    for kind in requested(task):
        done = _committed(task, storage, kind)
        if done is not None:
            results[kind] = done
            continue
        folder = ExperimentLayout.transfer(task.run, FOLDERS[kind])
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
        metrics = {**out["metrics"], "source": provenance, "run": task.run, "world_size": ctx.rank.world}
        if ctx.rank.is_main:
            storage.write_json(folder + "metrics.json", metrics)
            storage.write_json(folder + "curve.json", {"points": out["curve"]})
            write_marker(storage, folder + "done.json", spec_hash=task.spec_hash, kind=kind)
        ctx.rank.barrier()
        results[kind] = metrics
        log.info(
            "transfer %s of %s: %s",
            kind,
            task.run,
            {k: metrics.get(k) for k in ("top1", "ap50", "ap50_voc07")},
        )
    return _summary(task, results, storage)
