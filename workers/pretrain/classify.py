"""Transfer to a labelled classification set: full fine-tuning (top-1) and a linear probe.

The labelled sets are RealData (ImageFolder or WebDataset, matched to ``labels`` as everywhere in
synthrec: synthrec.workers.realdata). Images are decoded with torchvision and augmented with transforms v2:
RandomResizedCrop + flip for training, resize + centre crop for evaluation, each sample's augmentation
seeded by (seed, epoch, index) so that a resumed fine-tuning repeats the interrupted one.

- Fine-tuning: a fresh classifier on the transferred backbone, everything trained; SGD with momentum,
  cosine per epoch after a linear warmup; DistributedDataParallel over the torchrun group, each rank
  taking every world-th sample of the epoch's permutation; checkpoints at epoch ends when due and on
  SIGTERM (the same mechanism as pre-training), resumable mid-epoch.
- Linear probe: the backbone frozen in eval mode (BatchNorm statistics frozen, as MoCo's protocol); the
  pooled features of the centre crops are computed once (sharded over the ranks), and a linear layer
  initialised N(0, 0.01) is trained on them with SGD and the step schedule of ``milestones``.
- Evaluation: each rank scores its share of the test set and the counts are summed: top-1 (and top-5
  with 5 classes or more), per-class accuracy.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from synthrec.workers.pretrain import augment, distributed
from synthrec.workers.pretrain.data import stable_hash
from synthrec.workers.runtime import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelledSet:
    items: list[tuple[str, int]]  # (image URI, class)
    classes: list[str]
    info: dict[str, Any]


def index_set(data: Any, labels: Any, opener: Any) -> LabelledSet:
    """The images of a RealData split as (URI, class), sorted by URI within classes."""
    from synthrec.api.labels import resolve_labels
    from synthrec.workers.realdata import describe, index_real_data

    resolved = resolve_labels(labels)
    index = index_real_data(data, resolved, opener)
    items = [(img.uri, c) for c in sorted(index.by_class) for img in index.by_class[c]]
    return LabelledSet(items, resolved.names, describe(index))


class ImageSet(torch.utils.data.Dataset):
    """Map-style dataset of (uint8 image, class); ``transform`` is seeded per (seed, epoch, index)."""

    def __init__(self, items: list[tuple[str, int]], reader: Any, transform: Any, seed: int) -> None:
        self.items, self.reader, self.transform, self.seed = items, reader, transform, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from torchvision.io import ImageReadMode, decode_image

        uri, label = self.items[i]
        data = self.reader(uri)
        try:
            image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except (RuntimeError, ValueError) as exc:
            raise DataError(f"{uri} cannot be decoded ({exc}); remove or replace it") from None
        seed = stable_hash("transfer", self.seed, self.epoch, i) % (2**63)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            return self.transform(image), label


def shard_indices(n: int, rank: int, world: int, epoch: int | None, seed: int) -> list[int]:
    """This rank's indices of an epoch: a permutation seeded by (seed, epoch) (None: in order), every
    world-th from ``rank``, cut to the same length on every rank (training) so steps stay in lockstep."""
    order = list(range(n))
    if epoch is not None:
        random.Random(stable_hash("perm", seed, epoch)).shuffle(order)
        order = order[: n - n % world]
    return order[rank::world]


def _loader(dataset: Any, indices: list[int], batch: int, workers: int, pin: bool, drop_last: bool) -> Any:
    batches = [indices[i : i + batch] for i in range(0, len(indices), batch)]
    if drop_last and batches and len(batches[-1]) < batch:
        batches.pop()
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        pin_memory=pin,
        worker_init_fn=distributed.ignore_stop_signals if workers else None,
    )
    return distributed.batches(loader)


@torch.no_grad()
def evaluate(
    model: Any, dataset: Any, ctx: Any, batch: int, workers: int, normalise: Any, classes: int
) -> dict[str, Any]:
    """Top-1 / top-5 and per-class accuracy over the whole set, each rank scoring its share."""
    rank, device = ctx.rank, ctx.rank.device
    model.eval()
    indices = shard_indices(len(dataset), rank.rank, rank.world, None, 0)
    counts = torch.zeros(3, classes, dtype=torch.float64, device=device)  # correct@1, correct@5, total
    for images, labels in _loader(dataset, indices, batch, workers, device.type == "cuda", False):
        logits = model(normalise(images.to(device)))
        labels = labels.to(device)
        top = logits.topk(min(5, classes), dim=1).indices
        counts[0].index_add_(0, labels, (top[:, 0] == labels).double())
        counts[1].index_add_(0, labels, (top == labels[:, None]).any(dim=1).double())
        counts[2].index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
    if rank.backend is not None:
        dist.all_reduce(counts)
    total = counts[2].sum().item()
    per_class = (counts[0] / counts[2].clamp(min=1)).tolist()
    return {
        "top1": round(100.0 * counts[0].sum().item() / total, 4),
        "top5": round(100.0 * counts[1].sum().item() / total, 4) if classes >= 5 else None,
        "test_images": int(total),
        "per_class_top1": [round(100.0 * a, 2) for a in per_class],
    }


def cosine_lr(base: float, epoch: int, epochs: int, step: int, steps: int, warmup: float) -> float:
    import math

    exact = epoch + step / max(1, steps)
    if exact < warmup:
        return base * exact / warmup
    return base * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def fine_tune(ctx: Any, cfg: Any, model: Any, mean: Any, std: Any, ckpts: Any) -> dict[str, Any]:
    """Full fine-tuning of ``model`` (backbone + fresh classifier) on ``cfg.train``; test top-1."""
    from synthrec.workers.features import RealReader
    from synthrec.workers.pretrain import checkpoint

    task, rank, device = ctx.task, ctx.rank, ctx.rank.device
    opener = lambda uri: ctx.open(uri)  # noqa: E731
    train_set, test_set = index_set(cfg.train, cfg.labels, opener), index_set(cfg.test, cfg.labels, opener)
    reader = RealReader(task.output.endpoint, task.output.region)
    train = ImageSet(
        train_set.items, reader, augment.supervised_train(cfg.image_size, randaugment=False), task.seed
    )
    test = ImageSet(test_set.items, reader, augment.evaluation(cfg.image_size), task.seed)
    if cfg.batch_size % rank.world:
        raise DataError(
            f"classification.batch_size {cfg.batch_size} is not divisible by the world size {rank.world}"
        )
    local = cfg.batch_size // rank.world
    steps = (len(train) - len(train) % rank.world) // rank.world // local
    if steps == 0:
        raise DataError(
            f"classification: {len(train)} training images are fewer than one batch of {cfg.batch_size}; "
            "lower batch_size"
        )
    lr = cfg.lr if cfg.lr is not None else 0.01 * cfg.batch_size / 768
    device_aug = augment.DeviceAugment(num_classes=None, mean=mean, std=std)
    model.to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    ddp = model
    if rank.backend is not None:
        ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    position, curve = {"epoch": 0, "batch": 0}, []
    modules = {"model": model, "optimizer": optimizer}
    state = checkpoint.restore(ckpts, rank, modules)
    if state is not None:
        position, curve = dict(state["position"]), list(state["curve"])

    def save() -> None:
        step = position["epoch"] * steps + position["batch"]
        checkpoint.save_state(ckpts, rank, step, modules, {"position": dict(position), "curve": curve})

    preemption = checkpoint.Preemption(rank, ctx.stop, 60.0 * task.checkpoint.every_minutes, save)
    ctx.progress.start(cfg.epochs * steps)
    ctx.progress.advance(position["epoch"] * steps + position["batch"])
    while position["epoch"] < cfg.epochs:
        epoch = position["epoch"]
        train.epoch = epoch
        indices = shard_indices(len(train), rank.rank, rank.world, epoch, task.seed)[
            position["batch"] * local :
        ]
        ddp.train()
        total, n = 0.0, 0
        for images, labels in _loader(train, indices, local, cfg.loader_workers, device.type == "cuda", True):
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(lr, epoch, cfg.epochs, position["batch"], steps, cfg.warmup_epochs)
            x, _ = device_aug(images.to(device, non_blocking=True))
            loss = F.cross_entropy(ddp(x), labels.to(device), label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, n = total + loss.item(), n + 1
            position["batch"] += 1
            ctx.progress.advance()
            preemption.after_step(f"in fine-tuning epoch {epoch}")
        curve.append(
            {"epoch": epoch + 1, "loss": round(total / max(1, n), 6), "lr": optimizer.param_groups[0]["lr"]}
        )
        position = {"epoch": epoch + 1, "batch": 0}
    save()
    metrics = evaluate(
        model, test, ctx, local, cfg.loader_workers, device_aug.normalise, len(test_set.classes)
    )
    metrics.update(
        kind="classification",
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=lr,
        image_size=cfg.image_size,
        train_images=len(train),
        classes=test_set.classes,
        train_data=train_set.info,
        test_data=test_set.info,
    )
    return {"metrics": metrics, "curve": curve}


@torch.no_grad()
def features(model: Any, dataset: Any, ctx: Any, batch: int, workers: int, normalise: Any) -> tuple[Any, Any]:
    """Pooled backbone features of every image (each rank computes its share; all ranks get all)."""
    rank, device = ctx.rank, ctx.rank.device
    model.eval()
    indices = shard_indices(len(dataset), rank.rank, rank.world, None, 0)
    feats, labels, order = [], [], []
    position = 0
    for images, y in _loader(dataset, indices, batch, workers, device.type == "cuda", False):
        feats.append(model(normalise(images.to(device))).float().cpu())
        labels.append(y)
        order += indices[position : position + len(y)]
        position += len(y)
    mine = (torch.cat(feats), torch.cat(labels), torch.tensor(order))
    parts = rank.gather_objects(mine)
    x = torch.cat([p[0] for p in parts])
    y = torch.cat([p[1] for p in parts])
    idx = torch.cat([p[2] for p in parts])
    keep = torch.argsort(idx)
    return x[keep], y[keep]


def linear_probe(ctx: Any, cfg: Any, backbone: Any, mean: Any, std: Any) -> dict[str, Any]:
    """MoCo's linear classification protocol on cached features of the frozen backbone."""
    from synthrec.workers.features import RealReader

    task, device = ctx.task, ctx.rank.device
    opener = lambda uri: ctx.open(uri)  # noqa: E731
    train_set, test_set = index_set(cfg.train, cfg.labels, opener), index_set(cfg.test, cfg.labels, opener)
    reader = RealReader(task.output.endpoint, task.output.region)
    transform = augment.evaluation(cfg.image_size)
    normalise = augment.DeviceAugment(num_classes=None, mean=mean, std=std).normalise
    backbone.to(device)
    batch = max(1, cfg.batch_size // ctx.rank.world)
    (x_train, y_train), (x_test, y_test) = (
        features(
            backbone,
            ImageSet(split.items, reader, transform, task.seed),
            ctx,
            batch,
            cfg.loader_workers,
            normalise,
        )
        for split in (train_set, test_set)
    )
    classes = len(train_set.classes)
    generator = torch.Generator().manual_seed(task.seed)
    head = nn.Linear(x_train.shape[1], classes)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.01, generator=generator)
        head.bias.zero_()
    optimizer = torch.optim.SGD(
        head.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    milestones = sorted({max(1, round(f * cfg.epochs)) for f in cfg.milestones})
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    curve = []
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(x_train), generator=generator)
        total = 0.0
        for i in range(0, len(order), cfg.batch_size):
            j = order[i : i + cfg.batch_size]
            loss = F.cross_entropy(head(x_train[j]), y_train[j])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(j)
        schedule.step()
        curve.append({"epoch": epoch + 1, "loss": round(total / len(order), 6)})
    with torch.no_grad():
        predicted = head(x_test).argmax(dim=1)
    correct = (predicted == y_test).double()
    per_class = [
        round(100.0 * correct[y_test == c].mean().item(), 2) if (y_test == c).any() else None
        for c in range(classes)
    ]
    metrics = {
        "kind": "linear-probe",
        "top1": round(100.0 * correct.mean().item(), 4),
        "test_images": len(y_test),
        "train_images": len(y_train),
        "per_class_top1": per_class,
        "classes": train_set.classes,
        "epochs": cfg.epochs,
        "lr": cfg.lr,
        "milestones": milestones,
        "feature_dim": int(x_train.shape[1]),
        "protocol": "features of the centre crop, cached once; SGD on a linear layer (MoCo's main_lincls)",
    }
    return {"metrics": metrics, "curve": curve}
