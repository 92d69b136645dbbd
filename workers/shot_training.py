"""The training loop Tip-Adapter-F and CoOp share: epochs over a fresh view of the real shots each, in
shuffled batches (the last partial one dropped when the shots fill a batch, as both official loaders do),
and, with a validation set, the best epoch kept next to the last one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from synthrec.workers.tuning import TuneResult


def batches_per_epoch(n: int, batch: int) -> int:
    """Both official loaders drop the last partial batch when the shots fill at least one batch."""
    return n // batch if n >= batch else 1


def train_on_shots(
    optimizer: torch.optim.Optimizer,
    labels: torch.Tensor,
    view: Callable[[int], torch.Tensor],
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    state: Callable[[], torch.Tensor],
    *,
    phase: str,
    epochs: int,
    batch_size: int,
    seed: int,
    lr_at: Callable[[int, int], float],
    validate: Callable[[torch.Tensor], float] | None = None,
    keep_best: bool = False,
    on_step: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, TuneResult]:
    """Run ``epochs`` epochs. ``view(epoch)`` gives the shots' features for (0-based) ``epoch``,
    ``loss(features, labels)`` a batch's loss, ``lr_at(epoch, step)`` the learning rate and ``state()``
    what the model is after an epoch (a tensor ``validate`` scores). Returns the reported state (the last
    epoch's, or with ``keep_best`` the best validation epoch's), the other one when there is a validation
    set, and the curve."""
    n = len(labels)
    per_epoch = batches_per_epoch(n, batch_size)
    gen = torch.Generator().manual_seed(seed)
    result = TuneResult()
    result.phases.append(
        {"name": phase, "epochs": epochs, "steps": per_epoch * epochs, "steps_per_epoch": per_epoch}
    )
    best: tuple[float, torch.Tensor, int] | None = None
    step = 0
    for epoch in range(epochs):
        features = view(epoch)
        order = torch.randperm(n, generator=gen).to(features.device)
        losses: list[float] = []
        rate = 0.0
        for b in range(per_epoch):
            idx = order[b * batch_size : (b + 1) * batch_size]
            rate = lr_at(epoch, step)
            for group in optimizer.param_groups:
                group["lr"] = rate
            value = loss(features[idx], labels[idx].to(features.device))
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            number = float(value.detach())
            result.steps.append({"loss": number, "real": number, "lr": rate})
            losses.append(number)
            step += 1
            if on_step is not None:
                on_step()
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "phase": phase,
            "loss": sum(losses) / len(losses),
            "lr": rate,
        }
        if validate is not None:
            current = state()
            record["val_top1"] = top1 = validate(current)
            if best is None or top1 > best[0]:
                best = (top1, current, epoch + 1)
        result.epochs.append(record)
    last = state()
    result.selected_epoch = epochs
    if best is None:
        return last, None, result
    result.best_validation_epoch = best[2]
    if keep_best:
        result.selected_epoch = best[2]
        return best[1], last, result
    return last, best[1], result
