"""MoCo v2 (He et al. 2020; Chen et al. 2020), written from the algorithm as the official code defines it
(facebookresearch/moco ``moco/builder.py``; the facts are in reference/baselines-and-pretraining.md §1).

- Query encoder: the timm backbone (pooled features) + head; MoCo v2's head is Linear(F, F), ReLU,
  Linear(F, dim) (``mlp``), v1's is Linear(F, dim). The key encoder starts as a copy and gets no gradient.
- Each step: q = normalise(f_q(x_q)); then, without gradient, the key encoder moves towards the query
  encoder (θ_k ← m θ_k + (1 - m) θ_q, parameters only, BN buffers are the key encoder's own) BEFORE the
  keys are computed; k = normalise(f_k(x_k)) on a batch shuffled across processes (Shuffling BN) and
  unshuffled after.
- Logits [q·k₊, q·queue] / T, shape N x (1 + K); the positive is at index 0, so the loss is the cross
  entropy against label 0 (InfoNCE).
- Queue: a dim x K buffer initialised with normalised Gaussian columns; after the loss the keys of all
  processes (all-gathered, in rank order) overwrite the columns [ptr, ptr + B) and ptr = (ptr + B) mod K;
  K must be a multiple of the global batch (the loader drops incomplete batches).

With one process the key batch is not shuffled (there is nothing to shuffle across; the official Colab
notebook uses a split BN for that case, which is not reproduced here).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def projection_head(features: int, dim: int, mlp: bool) -> nn.Module:
    if mlp:
        return nn.Sequential(nn.Linear(features, features), nn.ReLU(inplace=True), nn.Linear(features, dim))
    return nn.Linear(features, dim)


class Encoder(nn.Module):
    """Backbone (timm, num_classes=0: pooled features) followed by the projection head."""

    def __init__(self, backbone: nn.Module, dim: int, mlp: bool) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = projection_head(backbone.num_features, dim, mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def moco_logits(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """[q·k₊, q·queue] / T for L2-normalised q [N, d], k [N, d] and queue [d, K]: N x (1 + K), float32."""
    q, k, queue = q.float(), k.float(), queue.float()
    positive = (q * k).sum(dim=1, keepdim=True)
    negative = q @ queue
    return torch.cat([positive, negative], dim=1) / temperature


def _gather(x: torch.Tensor) -> torch.Tensor:
    """All processes' ``x`` concatenated in rank order (no gradient)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class MoCo(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        *,
        dim: int = 128,
        queue: int = 65536,
        momentum: float = 0.999,
        temperature: float = 0.2,
        mlp: bool = True,
        shuffle_bn: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.m = momentum
        self.temperature = temperature
        self.shuffle_bn = shuffle_bn
        self.encoder_q = Encoder(backbone, dim, mlp)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad = False
        generator = torch.Generator().manual_seed(seed)  # the same queue on every process
        self.register_buffer("queue", F.normalize(torch.randn(dim, queue, generator=generator), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def momentum_update(self) -> None:
        for q, k in zip(self.encoder_q.parameters(), self.encoder_k.parameters(), strict=True):
            k.mul_(self.m).add_(q.detach(), alpha=1.0 - self.m)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        keys = _gather(keys)
        size, length = keys.shape[0], self.queue.shape[1]
        if length % size:
            raise ValueError(f"queue length {length} is not a multiple of the global batch {size}")
        ptr = int(self.queue_ptr)
        self.queue[:, ptr : ptr + size] = keys.T.to(self.queue.dtype)
        self.queue_ptr[0] = (ptr + size) % length

    @torch.no_grad()
    def _shuffle(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This process's slice of the globally shuffled key batch, and the index that undoes it."""
        if (
            not (self.shuffle_bn and dist.is_available() and dist.is_initialized())
            or dist.get_world_size() == 1
        ):
            return x, None
        gathered = _gather(x)
        order = torch.randperm(gathered.shape[0], device=x.device)
        dist.broadcast(order, src=0)  # rank 0's permutation for everyone
        mine = order.view(dist.get_world_size(), -1)[dist.get_rank()]
        return gathered[mine], torch.argsort(order)

    @torch.no_grad()
    def _unshuffle(self, k: torch.Tensor, undo: torch.Tensor | None) -> torch.Tensor:
        if undo is None:
            return k
        gathered = _gather(k)
        return gathered[undo.view(dist.get_world_size(), -1)[dist.get_rank()]]

    def forward(self, x_q: torch.Tensor, x_k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits N x (1 + K) (positive at index 0) and the keys, which the caller enqueues after the loss
        (``enqueue``) as the official code does inside forward, after computing the logits."""
        q = F.normalize(self.encoder_q(x_q).float(), dim=1)
        with torch.no_grad():
            self.momentum_update()
            shuffled, undo = self._shuffle(x_k)
            k = F.normalize(self.encoder_k(shuffled).float(), dim=1)
            k = self._unshuffle(k, undo)
        logits = moco_logits(q, k, self.queue.clone().detach(), self.temperature)
        return logits, k

    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        return F.cross_entropy(logits, labels)

    def backbone_state(self) -> dict[str, Any]:
        """The query encoder's backbone (what transfer reads)."""
        from synthrec.workers.pretrain.backbones import backbone_state

        return backbone_state(self.encoder_q.backbone)
