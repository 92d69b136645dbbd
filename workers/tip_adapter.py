"""Tip-Adapter and Tip-Adapter-F (Zhang et al., "Tip-Adapter: Training-free Adaption of CLIP for Few-shot
Classification", ECCV 2022), the cache-model baselines of the paper's Figure 1, on tensors.

For an L2-normalised test feature f [1, D], the cache keys F [N, D] (the real shots' L2-normalised
features) and values L [N, C] (their one-hot labels), the paper's Eq. (1)-(2):

    A = exp(-beta * (1 - f F^T))                      the affinity of f to every shot, [1, N]
    logits = logit_scale * f W^T + alpha * A L         CLIP's zero-shot logits plus the cache's

with W [C, D] CLIP's zero-shot head (renormalised mean of the template embeddings) and logit_scale 100 for
CLIP (the paper writes f W^T without the 100; the official code multiplies, so alpha is on that scale).

- Keys: each shot's features averaged over ``augment_views`` augmented views (unnormalised, as the
  official ``build_cache_model`` averages the encoder's output), then L2-normalised.
- Search: alpha and beta on the grid ``i * (max - 0.1) / steps + 0.1`` (i < steps, so the maximum itself
  is not on it), beta outer and alpha inner, the first best top-1 on the validation set kept.
- Tip-Adapter-F: the keys become a trainable bias-free linear layer (values, W and CLIP frozen),
  cross-entropy on the shots' features (a fresh augmented view each epoch), AdamW(lr, eps 1e-4, weight
  decay 0.01), cosine over every iteration (torch's CosineAnnealingLR, stepped per batch, to 0), alpha and
  beta fixed at their initial values; then alpha and beta are searched with the trained keys.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from synthrec.workers.shot_training import batches_per_epoch, train_on_shots
from synthrec.workers.tuning import TuneResult

# Rows of validation features scored at once in the search: bounds the [rows, N] affinity block.
SEARCH_CELLS = 1 << 24


def affinity(features: torch.Tensor, keys: torch.Tensor, beta: float) -> torch.Tensor:
    """A = exp(-beta * (1 - f F^T)) for L2-normalised ``features`` [B, D] and ``keys`` [N, D]."""
    return torch.exp(-beta * (1.0 - features.float() @ keys.float().T))


def tip_logits(
    features: torch.Tensor,
    text: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    alpha: float,
    beta: float,
    logit_scale: float,
) -> torch.Tensor:
    """CLIP's zero-shot logits plus the cache's: ``logit_scale * f W^T + alpha * A L``."""
    f = features.float()
    return logit_scale * f @ text.float().T + alpha * affinity(f, keys, beta) @ values.float()


def build_cache(
    views: Sequence[torch.Tensor], labels: torch.Tensor, classes: int
) -> tuple[torch.Tensor, ...]:
    """Keys: the mean over the views of each shot's (raw) features, L2-normalised; values: one-hot labels."""
    keys = F.normalize(torch.stack([v.float() for v in views]).mean(dim=0), dim=-1)
    values = F.one_hot(labels.long(), classes).float()
    return keys, values


def search_grid(maximum: float, steps: int) -> list[float]:
    """The official grid: ``i * (maximum - 0.1) / steps + 0.1`` for i in 0 .. steps - 1."""
    return [i * (maximum - 0.1) / steps + 0.1 for i in range(steps)]


@dataclass(frozen=True)
class SearchResult:
    alpha: float
    beta: float
    top1: float  # validation top-1 at (alpha, beta), percent


def search(
    features: torch.Tensor,
    labels: torch.Tensor,
    text: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    logit_scale: float,
    scale: Sequence[float],
    steps: Sequence[int],
) -> SearchResult:
    """The (alpha, beta) of the grid with the best top-1 on (``features``, ``labels``); ties keep the first
    in the official order (beta outer, alpha inner)."""
    betas = search_grid(scale[0], steps[0])
    alphas = torch.tensor(search_grid(scale[1], steps[1]), device=features.device)
    correct = torch.zeros(len(betas), len(alphas), dtype=torch.int64, device=features.device)
    rows = max(1, SEARCH_CELLS // max(1, keys.shape[0]))
    y = labels.to(features.device)
    for start in range(0, len(features), rows):
        f = features[start : start + rows].float()
        clip = logit_scale * f @ text.float().T
        similarity = f @ keys.float().T
        for b, beta in enumerate(betas):
            cache = torch.exp(-beta * (1.0 - similarity)) @ values.float()  # [rows, C]
            logits = clip.unsqueeze(0) + alphas.view(-1, 1, 1) * cache.unsqueeze(0)  # [alphas, rows, C]
            correct[b] += (logits.argmax(dim=-1) == y[start : start + rows]).sum(dim=-1)
    flat = correct.flatten().tolist()
    best = max(range(len(flat)), key=lambda i: (flat[i], -i))  # first best, row-major = beta outer
    b, a = divmod(best, len(alphas))
    return SearchResult(float(alphas[a]), betas[b], 100.0 * flat[best] / max(1, len(features)))


def cosine_lr(step: int, base: float, total: int) -> float:
    """torch's CosineAnnealingLR(T_max=total, eta_min=0) after ``step`` scheduler steps."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(1, total))) * base


def fine_tune(
    keys: torch.Tensor,
    values: torch.Tensor,
    text: torch.Tensor,
    logit_scale: float,
    labels: torch.Tensor,
    view: Callable[[int], torch.Tensor],
    *,
    alpha: float,
    beta: float,
    epochs: int,
    lr: float,
    weight_decay: float,
    eps: float,
    batch_size: int,
    seed: int,
    validate: Callable[[torch.Tensor], float] | None = None,
    keep_best: bool = False,
    on_step: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, TuneResult]:
    """Tip-Adapter-F: train the keys. ``view(epoch)`` gives the shots' L2-normalised features for that
    epoch (row i has label ``labels[i]``); ``validate(keys)`` the validation top-1 with those keys. Returns
    the reported keys (the last epoch's, or the best validation epoch's with ``keep_best``), the other
    keys when a validation set was given, and the curve."""
    adapter = torch.nn.Parameter(keys.detach().clone().float())
    optimizer = torch.optim.AdamW([adapter], lr=lr, eps=eps, weight_decay=weight_decay)
    total = batches_per_epoch(len(labels), batch_size) * epochs

    def loss(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = logit_scale * f @ text.float().T + alpha * affinity(f, adapter, beta) @ values.float()
        return F.cross_entropy(logits, y)

    return train_on_shots(
        optimizer,
        labels,
        view,
        loss,
        lambda: adapter.detach().clone(),
        phase="tip-adapter-f",
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        lr_at=lambda _epoch, step: cosine_lr(step, lr, total),
        validate=validate,
        keep_best=keep_best,
        on_step=on_step,
    )
