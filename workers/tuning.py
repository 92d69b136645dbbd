"""Classifier Tuning (paper §1.7 and §2.4): the head, the losses, the LR schedule, the batch plan of each
mixing order, the training loop and the evaluation. Pure computation on tensors; I/O is in train.py.

Head: ``logits = normalize(x) @ W.T + b``. Text init ("CT w. init"): W = logit_scale * text head (the
renormalised mean of L2-normalised template embeddings per class), b = 0, so the initial logits equal
CLIP's zero-shot logits. Random init: nn.Linear's uniform(-1/sqrt(D), 1/sqrt(D)) from the run's seed.

Loss on a synthetic batch: ``w * SCE + (1 - w) * CE``, SCE = -sum(p_t * log_softmax(student)) with
p_t = softmax(teacher / T), the teacher being the initial text head (fixed for the run, applied to the
frozen encoder's features); the student is not divided by T and there is no T^2 factor (official code).
The teacher being fixed, p_t is computed once per synthetic example before training (``teacher_targets``),
not once per step.
Loss on a real batch: CE. The two are weighted by ``syntheticLossWeight`` and ``realLossWeight``.

Optimiser: AdamW(betas 0.9/0.999, eps 1e-8, weight decay on every trainable parameter, bias included),
LR per step: linear warmup over ``warmupSteps`` then cosine to 0, **sized to the real number of optimiser
steps** of the phase (steps per epoch x epochs). The official few-shot code sizes its cosine from the
512-batch synthetic image loader but iterates a 128-batch feature loader, so its LR runs ~4x past the
planned end and, the formula being unclamped, oscillates; we do not copy that (method spec §4.3-1).
Gradient-norm clipping at ``gradClip`` (0 disables).

Mixing orders (one epoch = one pass over the phase's epoch data):

- ``mixed`` (the official code): every step takes one synthetic batch (a pass over the shuffled synthetic
  set per epoch, last batch partial) and one real batch from a cycled real loader (reshuffled whenever
  it runs out, across epoch boundaries). Loss = synthetic loss + real loss.
- ``synthetic-then-real`` / ``real-then-synthetic``: two phases, each of ``epochs`` epochs over its own
  data, each with a fresh AdamW and its own warmup + cosine schedule: the second phase fine-tunes the head
  the first produced (the official repo's "syn_init"/"real_init" head files hint at exactly this).
  Phase-wise training therefore runs ``epochs`` over each data source, mixed runs ``epochs`` in total.
- Only one source present (0 shots, or no synthetic data): one phase over it, whatever the mixing order.

The step loop never waits for the device: batch indices go to it once per epoch (one non-blocking copy),
losses stay on it, and the host reads them once per epoch (the logging interval: ``result.steps`` and the
epoch's mean loss), where validation also runs.

Selection: ``last`` reports the head after the final epoch; ``best-validation`` keeps the head of the
epoch with the best top-1 on the validation set (first best on ties). With a validation set the other
one is kept too (``TuneResult.alternative``), so a run reports both. The test split is never looked at
during training.

``softTarget.pseudoLabels: hard`` replaces SCE by the cross-entropy with the teacher's argmax class (the
official ``--hard_pseudo_label``), still weighted by ``softTarget.weight``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from synthrec.api import ClassifierTuning

Kind = Literal["mixed", "synthetic", "real"]
Step = tuple[torch.Tensor | None, torch.Tensor | None]  # (synthetic indices, real indices)


class LinearHead(nn.Module):
    """The classification head; it L2-normalises its input like WiSE-FT's ClassificationHead."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone().float())
        self.bias = nn.Parameter(bias.detach().clone().float())

    @classmethod
    def from_text(cls, text_head: torch.Tensor, logit_scale: float) -> LinearHead:
        return cls(logit_scale * text_head.float(), torch.zeros(text_head.shape[0], device=text_head.device))

    @classmethod
    def random(cls, classes: int, dim: int, seed: int, device: Any = "cpu") -> LinearHead:
        gen = torch.Generator().manual_seed(seed)
        bound = 1.0 / math.sqrt(dim)
        weight = (torch.rand(classes, dim, generator=gen) * 2 - 1) * bound
        bias = (torch.rand(classes, generator=gen) * 2 - 1) * bound
        return cls(weight.to(device), bias.to(device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x.float(), dim=-1) @ self.weight.T + self.bias


def sce_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Soft-target cross-entropy: the batch mean of -sum_c softmax(teacher/T)_c * log_softmax(student)_c."""
    return soft_cross_entropy(student_logits, F.softmax(teacher_logits.float() / temperature, dim=-1))


def soft_cross_entropy(student_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The batch mean of -sum_c target_c * log_softmax(student)_c, for target probabilities."""
    return -(target.float() * F.log_softmax(student_logits.float(), dim=-1)).sum(dim=-1).mean()


TEACHER_FLOAT32_ELEMENTS = (
    1 << 28
)  # above this many N x C targets (1 GiB in float32) they are kept in float16


def teacher_targets(
    teacher: nn.Module, features: torch.Tensor, soft: Any, chunk: int = 16384
) -> torch.Tensor:
    """What the fixed teacher says of every cached synthetic example, computed once: softmax(teacher(x) /
    T), [N, C] float32 (float16 when N x C exceeds TEACHER_FLOAT32_ELEMENTS: ~1e-3 relative, next to
    memory of the features' size); with ``pseudoLabels: hard`` its argmax class, [N] int64."""
    hard = soft.pseudo_labels == "hard"
    with torch.no_grad():
        parts = []
        for i in range(0, len(features), chunk):
            logits = teacher(features[i : i + chunk]).float()
            parts.append(logits.argmax(dim=-1) if hard else F.softmax(logits / soft.temperature, dim=-1))
    if not parts:
        return torch.zeros(
            (0,) if hard else (0, 0), device=features.device, dtype=torch.long if hard else None
        )
    targets = torch.cat(parts)
    return targets.half() if not hard and targets.numel() > TEACHER_FLOAT32_ELEMENTS else targets


def targets_loss(student_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The teacher term from ``teacher_targets``' rows of the batch: SCE with soft targets, or the
    cross-entropy with the teacher's class (the official ``Hard_pseudo_label_CE``)."""
    if targets.dtype == torch.long:
        return F.cross_entropy(student_logits.float(), targets)
    return soft_cross_entropy(student_logits, targets)


def teacher_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, soft: Any) -> torch.Tensor:
    """The teacher term of the synthetic loss: SCE at ``soft.temperature``, or with ``pseudoLabels: hard``
    the cross-entropy with the teacher's argmax class (the official ``Hard_pseudo_label_CE``)."""
    if soft.pseudo_labels == "hard":
        return F.cross_entropy(student_logits.float(), teacher_logits.argmax(dim=-1))
    return sce_loss(student_logits, teacher_logits, soft.temperature)


def lr_at(step: int, base: float, warmup: int, total: int) -> float:
    """Linear warmup for ``warmup`` steps, then cosine from ``base`` to 0 at step ``total`` (clamped)."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(step - warmup, span) / span
    return 0.5 * (1.0 + math.cos(math.pi * progress)) * base


# ------------------------------------------------------------------------------------------ plans


@dataclass(frozen=True)
class Phase:
    name: str  # mixed | synthetic | real
    kind: Kind
    epochs: int


def plan_phases(mixing: str, n_syn: int, n_real: int, epochs: int) -> list[Phase]:
    if n_syn and n_real:
        if mixing == "mixed":
            return [Phase("mixed", "mixed", epochs)]
        first, second = ("synthetic", "real") if mixing == "synthetic-then-real" else ("real", "synthetic")
        return [Phase(first, first, epochs), Phase(second, second, epochs)]  # type: ignore[arg-type]
    if n_syn:
        return [Phase("synthetic", "synthetic", epochs)]
    if n_real:
        return [Phase("real", "real", epochs)]
    return []


def epoch_batches(n: int, batch: int, gen: torch.Generator) -> list[torch.Tensor]:
    """One shuffled pass over ``n`` items in batches of ``batch`` (the last one may be smaller)."""
    perm = torch.randperm(n, generator=gen)
    return list(perm.split(batch))


class CycledBatches:
    """Batches of a loader that is restarted (reshuffled) whenever it runs out, like the official
    DataReader; its position carries over from one epoch to the next."""

    def __init__(self, n: int, batch: int, gen: torch.Generator) -> None:
        self.n, self.batch, self.gen = n, batch, gen
        self._pending: list[torch.Tensor] = []

    def next(self) -> torch.Tensor:
        if not self._pending:
            self._pending = epoch_batches(self.n, self.batch, self.gen)
        return self._pending.pop(0)


def steps_per_epoch(kind: Kind, n_syn: int, n_real: int, bs_syn: int, bs_real: int) -> int:
    if kind == "real":
        return math.ceil(n_real / bs_real)
    return math.ceil(n_syn / bs_syn)


def plan_epoch(
    kind: Kind,
    n_syn: int,
    n_real: int,
    bs_syn: int,
    bs_real: int,
    gen: torch.Generator,
    cycled: CycledBatches | None,
) -> list[Step]:
    """The (synthetic, real) index batches of one epoch, in step order."""
    if kind == "real":
        return [(None, b) for b in epoch_batches(n_real, bs_real, gen)]
    syn = epoch_batches(n_syn, bs_syn, gen)
    if kind == "synthetic":
        return [(b, None) for b in syn]
    assert cycled is not None
    return [(b, cycled.next()) for b in syn]


# ----------------------------------------------------------------------------------- feature sources


class CachedFeatures:
    """Trainable scope ``head``: batches are rows of the cached features (the paper's CT)."""

    def __init__(self, syn: torch.Tensor | None, real: torch.Tensor | None) -> None:
        self.syn, self.real = syn, real

    def parameters(self) -> list[nn.Parameter]:
        return []

    def batches(self, steps: Sequence[Step]) -> Iterator[tuple[torch.Tensor | None, torch.Tensor | None]]:
        for s, r in steps:
            yield (self.syn[s] if s is not None else None, self.real[r] if r is not None else None)

    def state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        pass


def freeze_batch_norm(module: nn.Module) -> int:
    """Put every BatchNorm layer in eval mode (running statistics stay fixed); returns how many."""
    count = 0
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            count += 1
    return count


def trainable_encoder_parameters(visual: nn.Module, scope: str) -> list[nn.Parameter]:
    """``full``: every parameter of the image tower. ``last-block``: the last transformer block, ln_post and
    proj of a ViT; layer4 and the attention pool of a ModifiedResNet; otherwise the last child module
    that has parameters (plus parameters held directly by the tower)."""
    if scope == "full":
        return list(visual.parameters())
    modules: list[nn.Module] = []
    direct: list[nn.Parameter] = []
    if hasattr(visual, "transformer") and hasattr(visual.transformer, "resblocks"):
        modules = [visual.transformer.resblocks[-1]]
        modules += [
            getattr(visual, n) for n in ("ln_post",) if isinstance(getattr(visual, n, None), nn.Module)
        ]
        direct = [visual.proj] if isinstance(getattr(visual, "proj", None), nn.Parameter) else []
    elif hasattr(visual, "layer4"):
        modules = [visual.layer4] + ([visual.attnpool] if hasattr(visual, "attnpool") else [])
    else:
        with_params = [m for m in visual.children() if any(True for _ in m.parameters())]
        modules = with_params[-1:]
        direct = [p for _, p in visual.named_parameters(recurse=False)]
    params = [p for m in modules for p in m.parameters()] + direct
    return list({id(p): p for p in params}.values())


class EncoderFeatures:
    """Trainable scope ``last-block``/``full``: images pass through the image tower in train mode each step
    (BatchNorm kept in eval mode when ``freeze_bn``, as the paper's freeze_BN), decoded by DataLoaders that
    follow the epoch's plan."""

    def __init__(
        self,
        visual: nn.Module,
        scope: str,
        make_loader: Callable[[str, list[list[int]]], Any],
        device: str,
        freeze_bn: bool = True,
        normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.visual = visual
        self.normalize = normalize  # uint8 batches -> the model's input, on the device
        self.make_loader = (
            make_loader  # (split 'syn'|'real', batches of indices) -> iterable of image batches
        )
        self.device = device
        self.freeze_bn = freeze_bn
        self.params = trainable_encoder_parameters(visual, scope)
        for p in visual.parameters():
            p.requires_grad_(False)
        for p in self.params:
            p.requires_grad_(True)

    def parameters(self) -> list[nn.Parameter]:
        return self.params

    def train_mode(self) -> None:
        self.visual.train()
        if self.freeze_bn:
            freeze_batch_norm(self.visual)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if self.normalize is not None:
            images = self.normalize(images)
        images = images.to(self.device, non_blocking=True)
        if self.device.startswith("cuda"):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return self.visual(images).float()
        return self.visual(images).float()

    def batches(self, steps: Sequence[Step]) -> Iterator[tuple[torch.Tensor | None, torch.Tensor | None]]:
        self.train_mode()
        syn_plan = [s.tolist() for s, _ in steps if s is not None]
        real_plan = [r.tolist() for _, r in steps if r is not None]
        syn_it = iter(self.make_loader("syn", syn_plan)) if syn_plan else None
        real_it = iter(self.make_loader("real", real_plan)) if real_plan else None
        for s, r in steps:
            x_syn = self.encode(_images(next(syn_it))) if s is not None and syn_it else None
            x_real = self.encode(_images(next(real_it))) if r is not None and real_it else None
            yield x_syn, x_real

    def state(self) -> dict[str, torch.Tensor]:
        return {str(i): p.detach().clone() for i, p in enumerate(self.params)}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for i, p in enumerate(self.params):
                p.copy_(state[str(i)])


def _images(batch: Any) -> torch.Tensor:
    return batch[0] if isinstance(batch, list | tuple) else batch


def indices_on(device: torch.device, steps: Sequence[Step]) -> list[Step]:
    """The epoch's index batches on ``device``: each source's indices in one pinned, non-blocking copy,
    split there, so no step makes a host-to-device copy (which would wait for the device)."""
    if device.type == "cpu":
        return list(steps)
    columns = []
    for side in (0, 1):
        parts = [s[side] for s in steps]
        present = [p for p in parts if p is not None]
        if not present:
            columns.append(parts)
            continue
        flat = torch.cat(present).pin_memory().to(device, non_blocking=True)
        pieces = iter(flat.split([len(p) for p in present]))
        columns.append([None if p is None else next(pieces) for p in parts])
    return list(zip(columns[0], columns[1], strict=True))


# ------------------------------------------------------------------------------------------ training


@dataclass
class TuneResult:
    phases: list[dict[str, Any]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)  # per epoch: phase, loss, lr, val_top1
    steps: list[dict[str, float]] = field(default_factory=list)  # per step: loss, syn, real, lr
    selected_epoch: int | None = None  # 1-based global epoch whose head is reported
    best_validation_epoch: int | None = None  # 1-based global epoch with the best validation top-1
    # With a validation set, the state of the model NOT reported (the best-validation one when the last is
    # reported, the last one otherwise), so that both are evaluated: {"head", "source", "epoch"}
    alternative: dict[str, Any] | None = None


def tune(
    head: LinearHead,
    teacher: LinearHead,
    source: CachedFeatures | EncoderFeatures,
    syn_cached: torch.Tensor | None,
    syn_y: torch.Tensor | None,
    real_y: torch.Tensor | None,
    ct: ClassifierTuning,
    seed: int,
    validate: Callable[[], float] | None = None,
    on_step: Callable[[], None] | None = None,
) -> TuneResult:
    """Train ``head`` (and the encoder parameters of ``source``) in place; see the module docstring.

    ``ct`` is the run's Classifier Tuning with every default filled in by the plan (its learning rate
    included); ``seed`` the run's seed."""
    if ct.lr is None:
        raise ValueError("classifier tuning needs its learning rate: the plan fills it in (experiment_runs)")
    n_syn = 0 if syn_y is None else len(syn_y)
    n_real = 0 if real_y is None else len(real_y)
    result = TuneResult()
    gen = torch.Generator().manual_seed(seed)
    teacher.requires_grad_(False)
    device = head.weight.device
    weight = ct.soft_target.weight
    targets = (
        teacher_targets(teacher, syn_cached, ct.soft_target)
        if syn_cached is not None and n_syn and weight > 0
        else None
    )
    best: tuple[float, dict[str, Any]] | None = None
    global_epoch = 0
    for phase in plan_phases(ct.mixing, n_syn, n_real, ct.epochs):
        params = list(head.parameters()) + list(source.parameters())
        optimizer = torch.optim.AdamW(
            params,
            lr=ct.lr,
            betas=(0.9, 0.999),
            eps=1e-8,
            weight_decay=ct.weight_decay,
            fused=device.type == "cuda",  # one kernel per step, its step counters on the device
        )
        spe = steps_per_epoch(phase.kind, n_syn, n_real, ct.batch_size_synthetic, ct.batch_size_real)
        total = spe * phase.epochs
        result.phases.append(
            {"name": phase.name, "epochs": phase.epochs, "steps": total, "steps_per_epoch": spe}
        )
        cycled = CycledBatches(n_real, ct.batch_size_real, gen) if phase.kind == "mixed" else None
        step = 0
        for _ in range(phase.epochs):
            global_epoch += 1
            plan = plan_epoch(
                phase.kind, n_syn, n_real, ct.batch_size_synthetic, ct.batch_size_real, gen, cycled
            )
            on_device = indices_on(device, plan)
            head.train()
            records: list[dict[str, Any]] = []
            pending: list[torch.Tensor] = []  # per step (loss, syn, real) on the device, read once per epoch
            nan = torch.full((), float("nan"), device=device)
            for (s_idx, r_idx), (x_syn, x_real) in zip(on_device, source.batches(plan), strict=True):
                lr = lr_at(step, ct.lr, ct.warmup_steps, total)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss = torch.zeros((), device=device)
                syn_loss = real_loss = nan
                if x_syn is not None:
                    logits = head(x_syn)
                    ce = F.cross_entropy(logits, syn_y[s_idx], label_smoothing=ct.label_smoothing)
                    syn_loss = (1 - weight) * ce
                    if targets is not None:
                        syn_loss = syn_loss + weight * targets_loss(logits, targets[s_idx])
                    loss = loss + ct.synthetic_loss_weight * syn_loss
                if x_real is not None:
                    logits = head(x_real)
                    real_loss = F.cross_entropy(logits, real_y[r_idx], label_smoothing=ct.label_smoothing)
                    loss = loss + ct.real_loss_weight * real_loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if ct.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, ct.grad_clip)
                optimizer.step()
                pending.append(torch.stack([loss.detach(), syn_loss.detach(), real_loss.detach()]))
                records.append({"lr": lr, "syn": x_syn is not None, "real": x_real is not None})
                step += 1
                if on_step is not None:
                    on_step()
            losses = _read_losses(records, pending)  # the epoch's one read of the device
            result.steps.extend(losses)
            epoch = {
                "epoch": global_epoch,
                "phase": phase.name,
                "loss": sum(r["loss"] for r in losses) / max(1, len(losses)),
                "lr": lr,
            }
            if validate is not None:
                head.eval()
                epoch["val_top1"] = validate()
                if best is None or epoch["val_top1"] > best[0]:
                    best = (epoch["val_top1"], snapshot(head, source, global_epoch))
            result.epochs.append(epoch)
    head.eval()
    result.selected_epoch = global_epoch or None
    if best is not None:
        snap = best[1]
        result.best_validation_epoch = snap["epoch"]
        result.alternative = snap
        if ct.selection == "best-validation":
            result.alternative = snapshot(head, source, global_epoch)
            load_snapshot(head, source, snap)
            result.selected_epoch = snap["epoch"]
    return result


def _read_losses(records: list[dict[str, Any]], pending: list[torch.Tensor]) -> list[dict[str, float]]:
    """Per step {lr, loss, syn, real} (syn/real only when the step had that batch), from one transfer."""
    values = torch.stack(pending).tolist() if pending else []
    out = []
    for record, (loss, syn, real) in zip(records, values, strict=True):
        row = {"lr": record["lr"]}
        if record["syn"]:
            row["syn"] = syn
        if record["real"]:
            row["real"] = real
        row["loss"] = loss
        out.append(row)
    return out


def snapshot(head: LinearHead, source: Any, epoch: int) -> dict[str, Any]:
    """The trainable state (head, and the encoder's when ``source`` has one) after ``epoch``."""
    return {
        "head": copy.deepcopy(head.state_dict()),
        "source": source.state() if source is not None else {},
        "epoch": epoch,
    }


def load_snapshot(head: LinearHead, source: Any, snap: dict[str, Any]) -> None:
    head.load_state_dict(snap["head"])
    if source is not None:
        source.load_state(snap["source"])


# ----------------------------------------------------------------------------------------- evaluation


def evaluate(logits: torch.Tensor, labels: torch.Tensor, classes: int) -> dict[str, Any]:
    """Top-1 (percent), per-class top-1 and the confusion matrix (rows: true class, columns: predicted)."""
    pred = logits.argmax(dim=-1).cpu()
    labels = labels.cpu()
    confusion = torch.zeros((classes, classes), dtype=torch.int64)
    confusion.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    counts = confusion.sum(dim=1)
    correct = confusion.diag()
    per_class = [
        {
            "index": c,
            "count": int(counts[c]),
            "top1": (100.0 * int(correct[c]) / int(counts[c])) if counts[c] else None,
        }
        for c in range(classes)
    ]
    total = int(counts.sum())
    return {
        "top1": 100.0 * int(correct.sum()) / total if total else None,
        "count": total,
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }
