"""MoCo v2 (synthrec.workers.pretrain.moco) against an independent restatement of the official algorithm
(facebookresearch/moco builder.py, reference/baselines-and-pretraining.md §1), computed here in float64
NumPy: the InfoNCE loss with the positive at index 0, the momentum update of the key encoder before the
keys are computed (parameters only), and the queue's enqueue/dequeue with wrap-around."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from synthrec.workers.pretrain.moco import MoCo, moco_logits


class TinyBackbone(nn.Module):
    """A backbone whose forward is easy to restate: relu(W x + b) on flattened images."""

    num_features = 6

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x.flatten(1)))


def params(module: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().double().numpy().copy() for k, v in module.named_parameters()}


def encode(p: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The restated encoder: backbone, then the v2 MLP head Linear-ReLU-Linear, then L2 normalisation."""
    h = np.maximum(x.reshape(len(x), -1) @ p["backbone.fc.weight"].T + p["backbone.fc.bias"], 0)
    h = np.maximum(h @ p["head.0.weight"].T + p["head.0.bias"], 0)
    z = h @ p["head.2.weight"].T + p["head.2.bias"]
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def info_nce(q: np.ndarray, k: np.ndarray, queue: np.ndarray, t: float) -> float:
    """-log(exp(q.k+/T) / (exp(q.k+/T) + sum_j exp(q.queue_j/T))), averaged over the batch."""
    losses = []
    for qi, ki in zip(q, k, strict=True):
        pos = np.exp(qi @ ki / t)
        neg = sum(np.exp(qi @ queue[:, j] / t) for j in range(queue.shape[1]))
        losses.append(-np.log(pos / (pos + neg)))
    return float(np.mean(losses))


def test_logits_put_the_positive_first_and_the_loss_is_info_nce() -> None:
    rng = np.random.default_rng(0)
    q = rng.normal(size=(5, 8))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    k = rng.normal(size=(5, 8))
    k /= np.linalg.norm(k, axis=1, keepdims=True)
    queue = rng.normal(size=(8, 16))
    queue /= np.linalg.norm(queue, axis=0, keepdims=True)
    logits = moco_logits(torch.tensor(q), torch.tensor(k), torch.tensor(queue), 0.2)
    assert logits.shape == (5, 17)
    np.testing.assert_allclose(logits[:, 0].numpy(), (q * k).sum(1) / 0.2, rtol=1e-5)
    np.testing.assert_allclose(logits[:, 1:].numpy(), q @ queue / 0.2, rtol=1e-5, atol=1e-6)
    model = MoCo(TinyBackbone(), dim=8, queue=16)
    assert model.loss(logits).item() == pytest.approx(info_nce(q, k, queue, 0.2), rel=1e-5)


def test_a_step_matches_the_official_algorithm() -> None:
    torch.manual_seed(0)
    model = MoCo(TinyBackbone(), dim=4, queue=8, momentum=0.9, temperature=0.2, mlp=True)
    with torch.no_grad():  # make the key encoder differ from the query encoder, as after some training
        for p in model.encoder_k.parameters():
            p.add_(0.1 * torch.randn_like(p))
    theta_q, theta_k = params(model.encoder_q), params(model.encoder_k)
    queue0 = model.queue.double().numpy().copy()
    x_q, x_k = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)

    logits, keys = model(x_q, x_k)
    loss = model.loss(logits)
    loss.backward()
    model.enqueue(keys)

    # the key encoder moves towards the query encoder BEFORE the keys are computed
    theta_k1 = {n: 0.9 * theta_k[n] + 0.1 * theta_q[n] for n in theta_k}
    for name, value in params(model.encoder_k).items():
        np.testing.assert_allclose(value, theta_k1[name], rtol=1e-6, atol=1e-7)
    q_ref = encode(theta_q, x_q.double().numpy())
    k_ref = encode(theta_k1, x_k.double().numpy())
    np.testing.assert_allclose(keys.double().numpy(), k_ref, rtol=1e-5, atol=1e-6)
    assert loss.item() == pytest.approx(info_nce(q_ref, k_ref, queue0, 0.2), rel=1e-5)
    # only the query encoder learns
    assert all(p.grad is not None for p in model.encoder_q.parameters())
    assert all(p.grad is None and not p.requires_grad for p in model.encoder_k.parameters())
    # the keys replace the oldest columns, the rest of the queue is untouched
    queue1 = model.queue.double().numpy()
    np.testing.assert_allclose(queue1[:, :4], k_ref.T, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(queue1[:, 4:], queue0[:, 4:])
    assert int(model.queue_ptr) == 4

    # the next batch fills the rest, and the one after wraps around to column 0
    model.enqueue(torch.full((4, 4), 0.5))
    assert int(model.queue_ptr) == 0 and torch.all(model.queue[:, 4:] == 0.5)
    model.enqueue(torch.full((4, 4), -0.5))
    assert (
        int(model.queue_ptr) == 4
        and torch.all(model.queue[:, :4] == -0.5)
        and torch.all(model.queue[:, 4:] == 0.5)
    )
    with pytest.raises(ValueError, match="not a multiple of the global batch 3"):
        model.enqueue(torch.zeros(3, 4))


def test_the_momentum_update_moves_parameters_only_and_m_zero_copies_the_query_encoder() -> None:
    torch.manual_seed(1)
    backbone = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    backbone.num_features = 4  # type: ignore[assignment]
    model = MoCo(backbone, dim=4, queue=8, momentum=0.0)
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(1.0)
        model.encoder_q.backbone[1].running_mean.fill_(3.0)
    buffers_before = copy.deepcopy(dict(model.encoder_k.named_buffers()))
    model.momentum_update()
    for (name, q), k in zip(model.encoder_q.named_parameters(), model.encoder_k.parameters(), strict=True):
        assert torch.equal(q, k), name
    for name, value in model.encoder_k.named_buffers():
        assert torch.equal(value, buffers_before[name]), name  # BN statistics are the key encoder's own
    # m = 0: the keys are exactly what the query encoder gives, so the update came before the keys
    plain = MoCo(TinyBackbone(), dim=4, queue=8, momentum=0.0)
    with torch.no_grad():
        for p in plain.encoder_q.parameters():
            p.add_(1.0)
    x = torch.randn(2, 3, 2, 2)
    _, keys = plain(x, x)
    assert torch.allclose(keys, torch.nn.functional.normalize(plain.encoder_q(x), dim=1), atol=1e-6)


def test_the_queue_starts_as_normalised_random_columns_identical_on_every_process() -> None:
    a, b = MoCo(TinyBackbone(), dim=4, queue=8, seed=3), MoCo(TinyBackbone(), dim=4, queue=8, seed=3)
    assert torch.equal(a.queue, b.queue)
    assert torch.allclose(a.queue.norm(dim=0), torch.ones(8)) and int(a.queue_ptr) == 0


def _shuffle_in_group(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.manual_seed(100 + rank)  # different RNG per rank: the permutation must still be rank 0's
        model = MoCo(TinyBackbone(), dim=4, queue=8)
        x = torch.arange(4 * 12, dtype=torch.float32).reshape(4, 3, 2, 2) + 1000 * rank
        shuffled, undo = model._shuffle(x)
        restored = model._unshuffle(shuffled.flatten(1)[:, :4].contiguous(), undo)
        torch.save({"shuffled": shuffled, "restored": restored, "x": x}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_shuffling_bn_deals_the_global_key_batch_and_unshuffling_restores_each_ranks_order(tmp_path) -> None:
    import torch.multiprocessing as mp

    args = (2, f"file://{tmp_path}/rendezvous", str(tmp_path))
    mp.start_processes(_shuffle_in_group, args=args, nprocs=2, start_method="fork")
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    everything = torch.cat([r["x"] for r in results])
    dealt = torch.cat([r["shuffled"] for r in results])
    assert not torch.equal(dealt, everything)  # shuffled across the two ranks ...
    assert sorted(dealt[:, 0, 0, 0].tolist()) == sorted(everything[:, 0, 0, 0].tolist())  # ... a permutation
    for r in results:  # every rank gets its own samples back, in its own order
        assert torch.equal(r["restored"], r["x"].flatten(1)[:, :4])
