"""The ``pretrain`` stage: supervised or MoCo v2 pre-training of a timm backbone on synthetic shards, on
every rank of a torchrun group (or one process), resumable from its checkpoints.

1. A run whose ``runs/<run>/pretrain/done.json`` carries this spec hash answers from its metrics at once.
2. Plan the data (synthrec.workers.pretrain.data): the datasets' manifests at their pinned digests, the
   kept or all images, the size cap; steps per epoch = epoch samples // global batch.
3. Build the model with the task's seed (the same weights on every rank), load the initial weights
   (scratch, timm, hf://, s3://, file://), resolve the recipe (synthrec.workers.pretrain.recipes), wrap
   it in DistributedDataParallel when there are several processes.
4. Resume from ``checkpoints/latest.json`` when it exists: model, optimizer, LR scheduler, grad scaler,
   this rank's RNG states and the data position (epoch, batches consumed), plus the loss curve so far.
5. Train: the loader's uint8 batches are normalised and augmented on the device; autocast in bf16 on GPU
   (fp16 with a grad scaler, or fp32, on request). After every step the ranks agree on two flags, "a
   checkpoint is due" (every ``checkpoint.everyMinutes``, rank 0's clock) and "stop" (SIGTERM/SIGINT on
   any rank), so all of them save or stop on the same step.
6. Finish: the replicas are checked to be identical, then rank 0 writes ``checkpoints/final.pt``,
   ``backbone.safetensors`` (the backbone without classifier or MoCo head: what transfer reads),
   ``card.json``, ``metrics.json``, ``curve.json`` and last ``done.json``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

from synthrec.contract.base import DocumentError
from synthrec.contract.layout import ExperimentLayout
from synthrec.contract.pretraining import (
    DataUse,
    PretrainCard,
    PretrainMetrics,
    parse_card,
    parse_pretrain_metrics,
)
from synthrec.contract.summaries import PretrainSummary
from synthrec.plan.tasks import batch_problem
from synthrec.storage import Storage, existing_commit, read_marker, write_marker
from synthrec.workers.runtime import ConfigError, DataError, RetryableError

log = logging.getLogger(__name__)


def committed(storage: Storage, folder: str, spec_hash: str) -> bool:
    """Whether ``folder``'s done.json is committed by this spec; StorageConflict when by another."""
    marker = folder + "done.json"
    return existing_commit(storage, marker, spec_hash, what=storage.uri + folder) is not None


def finished(task: Any, storage: Storage) -> PretrainSummary | None:
    """The summary of a committed run of this spec, or None; StorageConflict for another spec's run."""
    if not committed(storage, ExperimentLayout.pretrain(task.run), task.spec_hash):
        return None
    key = ExperimentLayout.pretrain(task.run, "metrics.json")
    try:
        metrics = parse_pretrain_metrics(storage.read_bytes(key), storage.url(key))
    except DocumentError as exc:
        raise DataError(
            f"{exc}; delete {storage.uri}{ExperimentLayout.pretrain(task.run)} to redo it"
        ) from None
    return summary(task.run, metrics, storage)


def summary(run: str, metrics: PretrainMetrics, storage: Storage) -> PretrainSummary:
    return PretrainSummary(
        run=run,
        steps=metrics.steps,
        loss=metrics.final_loss,
        images_per_s=metrics.images_per_s,
        world_size=metrics.world_size,
        card=storage.url(ExperimentLayout.pretrain(run, "card.json")),
    )


def run(ctx: Any) -> PretrainSummary:
    done = finished(ctx.task, ctx.storage)
    if done is not None:
        return done.model_copy(update={"skipped": True})
    return Trainer(ctx).train()


def autocast_dtype(precision: str, device: Any) -> Any:
    """The autocast dtype (None: full precision); ConfigError for fp16 without a GPU."""
    import torch

    cuda = device.type == "cuda"
    if precision == "auto":
        return torch.bfloat16 if cuda else None
    if precision == "fp16" and not cuda:
        raise ConfigError("precision fp16 needs a GPU; use bf16 or fp32 on CPU")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def _state_checksum(tensors: dict[str, Any]) -> float:
    import torch

    total = torch.zeros((), dtype=torch.float64)
    for i, (_, t) in enumerate(sorted(tensors.items())):
        if t.is_floating_point():
            total += (t.detach().double().cpu() * (1 + (i % 7))).sum()
    return float(total)


class Trainer:
    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.task = ctx.task
        self.rank = ctx.rank
        self.device = ctx.rank.device
        self.folder = ExperimentLayout.pretrain(self.task.run)
        self.curve: list[dict[str, Any]] = []
        self.pending = [0.0, 0]  # loss sum and steps since the last curve point
        self.images_seen = 0
        self.seconds = 0.0
        self.resumed_at: list[int] = []  # steps this run was resumed at (provenance)

    # ------------------------------------------------------------------------------------------ setup

    def _plan(self) -> Any:
        from synthrec.workers.pretrain import data

        task = self.task
        manifests = [
            data.read_manifest(s, task.output.endpoint, task.output.region) for s in task.data.synthetic
        ]
        real = task.data.real
        tars = data.list_real_tars(real.data if real else None, task.output.endpoint, task.output.region)
        return data.plan_data(task, manifests, tars)

    def _model(self, classes: int) -> tuple[Any, Any, Any]:
        """(model to train, its backbone, what the initial weights were)."""
        import torch

        from synthrec.workers.pretrain import backbones
        from synthrec.workers.pretrain.moco import MoCo

        task = self.task
        torch.manual_seed(task.seed)  # identical initial weights on every rank
        probe = backbones.create_model(task.backbone, num_classes=0, img_size=task.data.image_size)
        self.is_transformer = backbones.is_transformer(probe)
        from synthrec.workers.pretrain.recipes import resolve_recipe

        self.recipe = resolve_recipe(
            task.objective,
            self.is_transformer,
            task.batch_size,
            epochs=task.epochs,
            optimizer=task.optimizer,
            supervised=task.supervised,
        )
        opts = {"endpoint": task.output.endpoint, "region": task.output.region}
        torch.manual_seed(task.seed)
        if task.objective == "moco-v2":
            backbone = backbones.create_model(task.backbone, num_classes=0, img_size=task.data.image_size)
            loaded = backbones.load_weights(
                backbone, task.backbone, task.init, field="init", storage_opts=opts
            )
            m = task.moco
            model = MoCo(
                backbone,
                dim=m.dim,
                queue=m.queue,
                momentum=m.momentum,
                temperature=m.temperature,
                mlp=m.mlp,
                shuffle_bn=m.shuffle_bn,
                seed=task.seed,
            )
            return model, backbone, loaded
        model = backbones.create_model(
            task.backbone, num_classes=classes, img_size=task.data.image_size, drop_path=self.recipe.drop_path
        )
        loaded = backbones.load_weights(model, task.backbone, task.init, field="init", storage_opts=opts)
        return model, model, loaded

    def _optimizer(self, model: Any) -> Any:
        import torch

        r = self.recipe
        if r.decay_norm_and_bias:
            groups: Any = [
                {"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": r.weight_decay}
            ]
        else:  # timm: no weight decay on biases, norms and the model's no_weight_decay() set
            from timm.optim import param_groups_weight_decay

            skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
            groups = param_groups_weight_decay(model, r.weight_decay, no_weight_decay_list=skip)
        if r.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=r.lr, momentum=r.momentum)
        return torch.optim.AdamW(groups, lr=r.lr, betas=r.betas)

    # ------------------------------------------------------------------------------------------ train

    def train(self) -> PretrainSummary:
        import torch
        from torch.utils.data import DataLoader

        from synthrec.workers.pretrain import checkpoint, distributed
        from synthrec.workers.pretrain.augment import DeviceAugment
        from synthrec.workers.pretrain.data import LoaderConfig, ShardStream
        from synthrec.workers.pretrain.recipes import lr_at

        task, rank, device = self.task, self.rank, self.device
        plan = self._plan()
        model, backbone, self.loaded = self._model(len(plan.classes))
        problem = batch_problem(task, task.distributed.nnodes, rank.world // task.distributed.nnodes)
        if problem:
            raise ConfigError(problem)
        local_batch = task.batch_size // rank.world
        spe = plan.epoch_samples // task.batch_size
        if spe == 0:
            raise ConfigError(
                f"batch_size {task.batch_size} is larger than the {plan.epoch_samples} images of an epoch; "
                "lower it or use more data"
            )
        recipe = self.recipe
        total = recipe.epochs * spe if task.max_steps is None else min(task.max_steps, recipe.epochs * spe)
        self.dtype = autocast_dtype(task.precision, device)
        self.channels_last = device.type == "cuda" and not self.is_transformer
        model.to(device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        # MoCo: the key encoder has requires_grad False, so this is the query encoder (as the official code)
        optimizer = self._optimizer(model)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_at(recipe, step // spe, step % spe, spe) / recipe.lr
        )
        scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        ckpts = checkpoint.Checkpoints(
            self.ctx.storage, self.folder + "checkpoints", task.spec_hash, task.checkpoint.keep
        )

        position = {"epoch": 0, "batch": 0, "step": 0}
        torch.manual_seed(task.seed * 1009 + rank.rank)  # per-rank randomness (drop path, mixup, erasing)
        modules = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
        state = checkpoint.restore(ckpts, rank, modules)
        if state is not None:
            position = dict(state["position"])
            self.curve, self.pending = list(state["curve"]), list(state["pending"])
            self.images_seen, self.seconds = state["meta"]["images"], state["meta"]["seconds"]
            self.resumed_at = [*state["meta"]["resumed_at"], position["step"]]
            del state
        ddp = model
        if rank.backend is not None:
            from torch.nn.parallel import DistributedDataParallel

            ddp = DistributedDataParallel(
                model,
                device_ids=[device.index] if device.type == "cuda" else None,
                broadcast_buffers=task.objective == "supervised",  # MoCo: queues agree by construction
            )

        config = LoaderConfig(
            rank=rank.rank,
            world=rank.world,
            workers=task.data.loader_workers,
            local_batch=local_batch,
            steps_per_epoch=spe,
            seed=task.seed,
            image_size=task.data.image_size,
            objective=task.objective,
            randaugment=recipe.randaugment,
            interpolation=recipe.interpolation,
            repeats=recipe.repeated_augmentation,
            shuffle_buffer=task.data.shuffle_buffer,
            endpoint=task.output.endpoint,
            region=task.output.region,
            labels=_labels(plan.classes),
        )
        stream = ShardStream(plan, config)
        workers = task.data.loader_workers
        loader = DataLoader(
            stream,  # type: ignore[arg-type]
            batch_size=None,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            prefetch_factor=task.data.prefetch_factor if workers else None,
            persistent_workers=False,
            worker_init_fn=distributed.ignore_stop_signals if workers else None,
        )
        self.augment = DeviceAugment(
            num_classes=len(plan.classes) if task.objective == "supervised" else None,
            random_erasing=recipe.random_erasing,
            mixup=recipe.mixup,
            cutmix=recipe.cutmix,
        )

        def save(final: bool = False) -> dict[str, Any]:
            meta = {
                "loader_workers": workers, "images": self.images_seen, "seconds": self.seconds,
                "spec_hash": task.spec_hash, "recipe": recipe.as_dict(), "resumed_at": self.resumed_at,
            }  # fmt: skip
            fields = {
                "position": dict(position),
                "curve": self.curve,
                "pending": list(self.pending),
                "meta": meta,
            }
            return checkpoint.save_state(ckpts, rank, position["step"], modules, fields, final=final)

        progress = self.ctx.progress
        progress.start(total)
        progress.advance(position["step"])
        preemption = checkpoint.Preemption(rank, self.ctx.stop, task.checkpoint.every_minutes * 60.0, save)
        started_at = time.monotonic()
        step = position["step"]
        while step < total:
            stream.set_epoch(position["epoch"], position["batch"])
            batches = distributed.batches(loader)
            for b in range(position["batch"], spe):
                t0 = time.monotonic()
                loss = self._step(ddp, next(batches), optimizer, scaler)
                scheduler.step()
                step += 1
                self.images_seen += task.batch_size
                position.update(step=step, batch=b + 1)
                if b + 1 == spe:
                    position.update(epoch=position["epoch"] + 1, batch=0)
                self.pending[0] += loss
                self.pending[1] += 1
                if step % task.log_every == 0 or step == total:
                    self._log_point(step, optimizer.param_groups[0]["lr"], position)
                self.seconds += time.monotonic() - t0
                progress.advance()
                preemption.after_step(f"at step {step} of {total}")
                if step >= total:
                    break
            del batches
        train_seconds = time.monotonic() - started_at
        self._check_replicas(model)
        final = save(final=True)
        if not rank.is_main:  # the curve is all-reduced: every rank knows the loss the card records
            loss = self.curve[-1]["loss"] if self.curve else None
            return PretrainSummary(run=task.run, steps=step, loss=loss, world_size=rank.world)
        return self._finish(plan, backbone, final, step, spe, total, train_seconds)

    def _step(self, ddp: Any, batch: Any, optimizer: Any, scaler: Any) -> Any:
        import torch
        import torch.nn.functional as F

        device, task = self.device, self.task
        batch = [t.to(device, non_blocking=True) for t in batch]
        with torch.autocast(device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            if task.objective == "moco-v2":
                x_q, x_k = (self._layout(self.augment.normalise(v)) for v in batch)
                logits, keys = ddp(x_q, x_k)
                loss = self.model.loss(logits)
            else:
                x, y = self.augment(batch[0], batch[1])
                logits = ddp(self._layout(x))
                loss = F.cross_entropy(logits.float(), y, label_smoothing=self.recipe.label_smoothing)
        if not torch.isfinite(loss):
            raise RetryableError(
                f"the loss is {loss.item()} (not finite); lower the learning rate or use fp32"
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if task.objective == "moco-v2":
            self.model.enqueue(keys)
        return loss.detach().float().item()

    def _layout(self, x: Any) -> Any:
        import torch

        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _log_point(self, step: int, lr: float, position: dict[str, int]) -> None:
        import torch
        import torch.distributed as dist

        total = torch.tensor(
            [self.pending[0], float(self.pending[1])], dtype=torch.float64, device=self.device
        )
        if self.rank.backend is not None:
            dist.all_reduce(total)
        loss = float(total[0] / max(1.0, float(total[1])))
        self.curve.append({"step": step, "epoch": position["epoch"], "loss": round(loss, 6), "lr": lr})
        self.pending = [0.0, 0]
        if self.rank.is_main:
            log.info("step %d loss %.4f lr %.3g", step, loss, lr)

    def _check_replicas(self, model: Any) -> None:
        """Every rank must end with the same parameters (and MoCo queue): a cheap guard against desync.
        BatchNorm statistics differ per rank by design (each sees its own batches); rank 0's are saved."""
        tensors = dict(model.named_parameters())
        if hasattr(model, "queue"):
            tensors["queue"] = model.queue
        sums = self.rank.gather_objects(_state_checksum(tensors))
        if max(sums) - min(sums) > 1e-6 * max(1.0, abs(sums[0])):
            raise RetryableError(f"the processes ended with different weights (checksums {sums}); retrying")

    def _finish(
        self,
        plan: Any,
        backbone: Any,
        final: dict[str, Any],
        step: int,
        spe: int,
        total: int,
        train_seconds: float,
    ) -> PretrainSummary:
        import timm
        import torch
        from safetensors.torch import save as save_safetensors

        from synthrec.workers.pretrain.backbones import backbone_state

        task, storage = self.task, self.ctx.storage
        state = self.model.backbone_state() if task.objective == "moco-v2" else backbone_state(backbone)
        blob = save_safetensors(state, metadata={"backbone": task.backbone, "objective": task.objective})
        storage.write_bytes(self.folder + "backbone.safetensors", blob)
        cfg = backbone.pretrained_cfg
        losses = [p["loss"] for p in self.curve]
        precision = str(self.dtype).replace("torch.", "") if self.dtype else "fp32"
        metrics = PretrainMetrics(
            run=task.run,
            objective=task.objective,
            backbone=task.backbone,
            steps=step,
            steps_per_epoch=spe,
            epochs=round(step / spe, 4),
            images_seen=self.images_seen,
            first_loss=losses[0] if losses else None,
            final_loss=losses[-1] if losses else None,
            seconds_training=round(self.seconds, 2),
            images_per_s=round(self.images_seen / self.seconds, 2) if self.seconds else None,
            world_size=self.rank.world,
            precision=precision,
            device=self.device.type,
            recipe=self.recipe.as_dict(),
            data=DataUse.model_validate(plan.describe()),
            resumed_at=self.resumed_at,
        )
        datasets = [
            {"uri": s.uri, "name": s.name, "manifest_sha256": d}
            for s, d in zip(task.data.synthetic, plan.digests, strict=True)
        ]
        card = PretrainCard(
            backbone=task.backbone,
            objective=task.objective,
            num_features=backbone.num_features,
            classes=list(plan.classes) if task.objective == "supervised" else None,
            image_size=task.data.image_size,
            mean=list(cfg.get("mean") or (0.485, 0.456, 0.406)),
            std=list(cfg.get("std") or (0.229, 0.224, 0.225)),
            init=self.loaded.as_dict() if self.loaded else {"ref": "scratch"},
            data=DataUse.model_validate({**plan.describe(), "datasets": datasets}),
            steps=step,
            epochs=round(step / spe, 4),
            global_batch=task.batch_size,
            world_size=self.rank.world,
            recipe=self.recipe.as_dict(),
            moco=task.moco.model_dump(mode="json") if task.objective == "moco-v2" else None,
            precision=precision,
            final_loss=metrics.final_loss,
            files={
                "backbone.safetensors": hashlib.sha256(blob).hexdigest(),
                "checkpoint": {"key": final.get("checkpoint"), "sha256": final.get("sha256")},
            },
            spec_hash=task.spec_hash,
            versions={"timm": timm.__version__, "torch": torch.__version__},
        )
        storage.write_json(self.folder + "card.json", card.document())
        storage.write_json(self.folder + "metrics.json", metrics.document())
        storage.write_json(self.folder + "curve.json", {"points": self.curve})
        write_marker(storage, self.folder + "done.json", spec_hash=task.spec_hash, steps=step)
        return summary(task.run, metrics, storage)


def _labels(classes: tuple[str, ...]) -> Any:
    from synthrec.api import LabelSpace
    from synthrec.api.labels import resolve_labels

    return resolve_labels(LabelSpace.model_validate({"classes": [{"name": c} for c in classes]}))


def read_card(storage: Storage) -> PretrainCard:
    """card.json of a committed pre-training folder (``storage`` rooted at it); ConfigError otherwise."""
    from synthrec.storage import ObjectNotFound

    try:
        if read_marker(storage, "done.json") is None:
            raise ConfigError(f"{storage.uri} has no done.json: its pre-training has not finished")
        raw = storage.read_bytes("card.json")
    except ObjectNotFound:
        raise ConfigError(
            f"{storage.uri} has no card.json: it is not a synthrec pre-training folder"
        ) from None
    try:
        return parse_card(raw, storage.url("card.json"))
    except DocumentError as exc:
        raise ConfigError(str(exc)) from None


def load_backbone_state(storage: Storage, card: PretrainCard) -> dict[str, Any]:
    """backbone.safetensors of a pre-training folder, checked against the card's sha256."""
    from safetensors.torch import load

    blob = storage.read_bytes("backbone.safetensors")
    if hashlib.sha256(blob).hexdigest() != card.files["backbone.safetensors"]:
        raise ConfigError(f"{storage.url('backbone.safetensors')} does not match the sha256 in its card")
    return load(blob)
