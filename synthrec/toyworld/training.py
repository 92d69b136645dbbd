"""Small pieces every toy-world trainer shares: the progress protocol, the learning-rate schedule and EMA."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch


class Progress(Protocol):
    """What the builder reports to: tasks advanced step by step (``task``: which one, when several run at
    once; default: the last one started)."""

    def start(self, task: str, total: int) -> None: ...

    def advance(self, steps: int = 1, *, task: str | None = None) -> None: ...


class NoProgress:
    """Reports nothing (tests, libraries)."""

    def start(self, task: str, total: int) -> None:
        pass

    def advance(self, steps: int = 1, *, task: str | None = None) -> None:
        pass


def lr_factor(step: int, total: int, warmup: int, floor: float = 0.05) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from 1 down to ``floor`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def ema_update(average: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """``average`` <- decay * average + (1 - decay) * model, parameter by parameter (buffers copied)."""
    import torch

    with torch.no_grad():
        for avg, cur in zip(average.parameters(), model.parameters(), strict=True):
            avg.lerp_(cur, 1 - decay)
        for avg, cur in zip(average.buffers(), model.buffers(), strict=True):
            avg.copy_(cur)
