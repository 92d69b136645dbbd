"""Detection transfer: torchvision Faster R-CNN with a feature pyramid on the pre-trained timm backbone,
trained and tested on PASCAL VOC folders (synthrec.workers.pretrain.voc), the MoCo detection protocol's
solver (synthrec.api.pretraining.DetectionTransfer).

The backbone's feature maps at strides 4, 8, 16 and 32 (timm ``forward_intermediates``) feed torchvision's
FeaturePyramidNetwork (256 channels, plus a max-pooled level), which is what torchvision's Faster R-CNN
defaults (anchors 32-512, RoIAlign on levels 0-3) expect; a plain ViT has one stride and is refused
before anything is loaded. ``trainableLayers`` counts backbone stages from the top (5: all, including the
stem); ``norm`` freezes BatchNorm (torchvision's default for pre-trained backbones), trains it per process,
or synchronises it over the processes (SyncBatchNorm needs GPUs; on CPU it trains per process).
Training images are flipped at random and resized by the detector to a random ``minSizeTrain`` (its
RNG is the trainer's, so the schedule is reproducible); testing uses ``minSizeTest``.
"""

from __future__ import annotations

import logging
import random
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from synthrec.workers.pretrain import distributed, voc
from synthrec.workers.pretrain.data import stable_hash
from synthrec.workers.runtime import ConfigError, DataError

log = logging.getLogger(__name__)


class TimmFPN(nn.Module):
    """timm backbone -> FPN: an OrderedDict of 256-channel maps ('0'..'3', 'pool'), as torchvision wants."""

    def __init__(self, body: nn.Module, levels: list[int]) -> None:
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        super().__init__()
        self.body = body
        self.levels = levels
        channels = [body.feature_info[i]["num_chs"] for i in levels]
        self.fpn = FeaturePyramidNetwork(channels, 256, extra_blocks=LastLevelMaxPool())
        self.out_channels = 256

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        maps = self.body.forward_intermediates(x, indices=self.levels, intermediates_only=True)
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))


def freeze_stages(body: nn.Module, trainable: int) -> None:
    """Freeze the stem and the first ``5 - trainable`` stages (by timm's feature_info module names)."""
    frozen_levels = 5 - trainable
    if frozen_levels <= 0:
        return
    info = list(body.feature_info)
    last = info[min(frozen_levels, len(info)) - 1]["module"]
    names = [n for n, _ in body.named_children()]
    top = last.split(".")[0]
    for name in names[: names.index(top) + 1]:
        for p in getattr(body, name).parameters():
            p.requires_grad = False


def build_detector(
    backbone_name: str, state: dict[str, Any] | None, cfg: Any, mean: Any, std: Any, world: int, cuda: bool
) -> Any:
    from timm.layers import freeze_batch_norm_2d
    from torchvision.models.detection import FasterRCNN

    from synthrec.workers.pretrain import backbones

    body = backbones.create_model(backbone_name, num_classes=0)
    problem = backbones.detection_problem(body)
    if problem:
        raise ConfigError(f"detection: {problem}")
    if state is not None:
        backbones.apply_state(body, state, source="the pre-trained backbone", field="source")
    freeze_stages(body, cfg.trainable_layers)
    if cfg.norm == "frozen":
        body = freeze_batch_norm_2d(body)
    levels = backbones.pyramid_levels(body)
    model = FasterRCNN(
        TimmFPN(body, levels),
        num_classes=len(cfg.classes) + 1,
        min_size=tuple(cfg.min_size_train),
        max_size=cfg.max_size,
        image_mean=list(mean),
        image_std=list(std),
    )
    if cfg.norm == "sync" and world > 1:
        if cuda:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            log.warning("detection.norm sync needs GPUs; BatchNorm trains per process on CPU")
    return model


class DetectionSet(torch.utils.data.Dataset):
    def __init__(
        self, images: list[voc.VocImage], reader: Any, *, train: bool, seed: int, use_difficult: bool
    ) -> None:
        self.images, self.reader, self.train, self.seed, self.use_difficult = (
            images,
            reader,
            train,
            seed,
            use_difficult,
        )
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Any, dict[str, Any]]:
        from torchvision.io import ImageReadMode, decode_image

        img = self.images[i]
        try:
            image = decode_image(
                torch.frombuffer(bytearray(self.reader(img.uri)), dtype=torch.uint8), mode=ImageReadMode.RGB
            )
        except (RuntimeError, ValueError) as exc:
            raise DataError(f"{img.uri} cannot be decoded ({exc})") from None
        objects = [o for o in img.objects if self.use_difficult or not o.difficult or not self.train]
        boxes = torch.tensor([o.box for o in objects], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([o.label for o in objects], dtype=torch.int64)
        if self.train and random.Random(stable_hash("flip", self.seed, self.epoch, i)).random() < 0.5:
            image = image.flip(-1)
            width = image.shape[-1]
            boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
        return image.float().div_(255.0), {"boxes": boxes, "labels": labels, "image_id": img.image_id}


def _collate(batch: list[Any]) -> tuple[list[Any], list[Any]]:
    return [b[0] for b in batch], [b[1] for b in batch]


def detection_lr(cfg: Any, iteration: int, base: float) -> float:
    milestones = cfg.milestones or [round(cfg.iterations * 0.75), round(cfg.iterations * 22 / 24)]
    factor = 0.1 ** sum(iteration >= m for m in milestones)
    if iteration < cfg.warmup_iterations:  # Detectron2's linear warmup from 0.001
        alpha = iteration / cfg.warmup_iterations
        factor *= 0.001 * (1 - alpha) + alpha
    return base * factor


def train_and_test(
    ctx: Any, cfg: Any, backbone_name: str, state: dict[str, Any] | None, mean: Any, std: Any, ckpts: Any
) -> dict[str, Any]:
    from synthrec.workers.features import RealReader
    from synthrec.workers.pretrain import checkpoint
    from synthrec.workers.pretrain.classify import shard_indices

    task, rank, device = ctx.task, ctx.rank, ctx.rank.device
    train_images: list[voc.VocImage] = []
    skipped = 0
    for part in cfg.train:
        found = voc.read_voc(ctx.open(part.uri), part.split, cfg.classes)
        train_images += [
            img for img in found.images if any(cfg.use_difficult or not o.difficult for o in img.objects)
        ]
        skipped += found.skipped["unknown_class"]
    test = voc.read_voc(ctx.open(cfg.test.uri), cfg.test.split, cfg.classes)
    if not train_images:
        raise DataError("detection: the training splits have no objects of the task's classes")
    if cfg.batch_size % rank.world:
        raise ConfigError(
            f"detection.batch_size {cfg.batch_size} is not divisible by the world size {rank.world}"
        )
    local = cfg.batch_size // rank.world
    model = build_detector(backbone_name, state, cfg, mean, std, rank.world, device.type == "cuda").to(device)
    base_lr = cfg.lr if cfg.lr is not None else 0.02 * cfg.batch_size / 16
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=base_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    ddp = model
    if rank.backend is not None:
        ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    reader = RealReader(task.output.endpoint, task.output.region)
    train_set = DetectionSet(
        train_images, reader, train=True, seed=task.seed, use_difficult=cfg.use_difficult
    )
    iteration, curve = 0, []
    torch.manual_seed(task.seed * 1009 + rank.rank)
    modules = {"model": model, "optimizer": optimizer}
    saved = checkpoint.restore(ckpts, rank, modules)
    if saved is not None:
        iteration, curve = saved["iteration"], list(saved["curve"])

    def save() -> None:
        checkpoint.save_state(ckpts, rank, iteration, modules, {"iteration": iteration, "curve": curve})

    per_epoch = max(1, (len(train_set) - len(train_set) % rank.world) // rank.world // local)
    preemption = checkpoint.Preemption(rank, ctx.stop, 60.0 * task.checkpoint.every_minutes, save)
    ctx.progress.start(cfg.iterations)
    ctx.progress.advance(iteration)
    pending = [0.0, 0]
    while iteration < cfg.iterations:
        epoch, offset = divmod(iteration, per_epoch)
        train_set.epoch = epoch
        indices = shard_indices(len(train_set), rank.rank, rank.world, epoch, task.seed)
        batches = [indices[i : i + local] for i in range(0, len(indices) - local + 1, local)][offset:]
        loader = torch.utils.data.DataLoader(
            train_set,
            batch_sampler=batches,
            num_workers=cfg.loader_workers,
            collate_fn=_collate,
            worker_init_fn=distributed.ignore_stop_signals if cfg.loader_workers else None,
        )
        ddp.train()
        for images, targets in distributed.batches(loader):
            for group in optimizer.param_groups:
                group["lr"] = detection_lr(cfg, iteration, base_lr)
            images = [im.to(device) for im in images]
            targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
            losses = ddp(images, targets)
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            iteration += 1
            pending[0] += float(loss.detach())
            pending[1] += 1
            if iteration % 20 == 0 or iteration == cfg.iterations:
                curve.append(
                    {
                        "iteration": iteration,
                        "loss": round(pending[0] / pending[1], 6),
                        "lr": optimizer.param_groups[0]["lr"],
                    }
                )
                pending = [0.0, 0]
            ctx.progress.advance()
            preemption.after_step(f"at detection iteration {iteration}")
            if iteration >= cfg.iterations:
                break
    save()
    metrics = evaluate(model, test, reader, ctx, cfg)
    metrics.update(
        kind="detection",
        iterations=cfg.iterations,
        batch_size=cfg.batch_size,
        lr=base_lr,
        classes=list(cfg.classes),
        train_images=len(train_images),
        skipped_objects=skipped + test.skipped["unknown_class"],
        norm=cfg.norm,
        detector="torchvision FasterRCNN + FPN (strides 4-32) on the timm backbone",
    )
    return {"metrics": metrics, "curve": curve}


@torch.no_grad()
def evaluate(model: Any, test: voc.VocSet, reader: Any, ctx: Any, cfg: Any) -> dict[str, Any]:
    from synthrec.workers.pretrain.classify import shard_indices

    rank, device = ctx.rank, ctx.rank.device
    model.eval()
    model.transform.min_size = (cfg.min_size_test,)
    dataset = DetectionSet(test.images, reader, train=False, seed=0, use_difficult=True)
    found: dict[str, list[tuple[list[float], int, float]]] = {}
    for i in shard_indices(len(dataset), rank.rank, rank.world, None, 0):
        image, target = dataset[i]
        out = model([image.to(device)])[0]
        found[target["image_id"]] = [
            (box.tolist(), int(label), float(score))
            for box, label, score in zip(
                out["boxes"].cpu(), out["labels"].cpu(), out["scores"].cpu(), strict=True
            )
        ]
    merged: dict[str, Any] = {}
    for part in rank.gather_objects(found):
        merged.update(part)
    model.transform.min_size = tuple(cfg.min_size_train)
    return voc.voc_metrics(test.images, merged, len(cfg.classes))
