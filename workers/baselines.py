"""Figure 1's real-shot baselines in the train stage: Tip-Adapter, Tip-Adapter-F and CoOp, on the run's
real shots (their cached features, and augmented views through the frozen image encoder), the
experiment's zero-shot head, and the run's validation set for their search and selection.

``fit`` returns a :class:`Fitted` that the train stage evaluates, reports and stores like a tuned head:
the logits of the reported model and of the other one (with a validation set: the last epoch's and the
best validation epoch's), the curve, and the tensors of ``head.safetensors``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from synthrec.workers.shot_training import batches_per_epoch
from synthrec.workers.tuning import TuneResult, evaluate

Logits = Callable[[Any], torch.Tensor]  # a FeatureSet -> logits


@dataclass
class Fitted:
    """A run's trained model as the train stage reports and stores it (every method, CT included)."""

    logits: Logits  # the reported model
    other: Logits | None  # the model not reported (the run has a validation set), else None
    result: TuneResult | None
    result: TuneResult
    tensors: dict[str, torch.Tensor]  # head.safetensors
    formula: str  # how the tensors give logits, for the file's metadata
    lr: float | None
    epochs: int
    schedule: str
    details: dict[str, Any] = field(default_factory=dict)


def fit(run: Any, text: torch.Tensor, logit_scale: float, val: Any, real: Any) -> Fitted:
    """Fit the run's method (``run.plan.method``) on the real shots ``real`` (a FeatureSet); ``val`` is
    the run's validation FeatureSet or None. ``run`` is the train stage's run (clip, labels, plan, ctx)."""
    method = run.plan.method
    if method in ("tip-adapter", "tip-adapter-f"):
        return _tip_adapter(run, text, logit_scale, val, real, fine_tune=method == "tip-adapter-f")
    if method == "coop":
        return _coop(run, logit_scale, val, real)
    raise ValueError(f"{method} is not one of Figure 1's real-shot baselines")


def _top1(logits: torch.Tensor, fs: Any, classes: int) -> float:
    return float(evaluate(logits, fs.labels, classes)["top1"])


def _views(run: Any, real: Any, scale: tuple[float, float]) -> Any:
    from synthrec.workers.shot_views import ShotViews, load_images

    images = load_images(real.items, real.reader)
    return ShotViews(run.clip, images, scale, run.plan.seed, run.ct.feature_batch_size)


# ------------------------------------------------------------------------------------------ Tip-Adapter


def _tip_adapter(
    run: Any, text: torch.Tensor, scale: float, val: Any, real: Any, *, fine_tune: bool
) -> Fitted:
    from synthrec.workers import tip_adapter as tip
    from synthrec.workers.shot_views import TIP_ADAPTER_SCALE

    s = run.plan.tip_adapter
    classes = len(run.labels)
    labels = real.labels
    views = _views(run, real, TIP_ADAPTER_SCALE) if s.augment_views > 0 else None
    if views is not None:
        keys, values = tip.build_cache(
            [views.encode(k, normalize=False) for k in range(s.augment_views)], labels, classes
        )
    else:
        keys, values = tip.build_cache([real.features], labels, classes)
    details: dict[str, Any] = {
        "cache": {"keys": int(keys.shape[0]), "augment_views": s.augment_views},
        "initial": {"alpha": s.alpha, "beta": s.beta},
    }

    def searched(with_keys: torch.Tensor) -> tuple[float, float]:
        if val is None or not s.search:
            return float(s.alpha), float(s.beta)
        found = tip.search(
            val.features, val.labels, text, with_keys, values, scale, s.search_scale, s.search_steps
        )
        details.setdefault("search", []).append(
            {"alpha": found.alpha, "beta": found.beta, "val_top1": found.top1}
        )
        return found.alpha, found.beta

    def model(with_keys: torch.Tensor, alpha: float, beta: float) -> Logits:
        return lambda fs: tip.tip_logits(fs.features, text, with_keys, values, alpha, beta, scale)

    formula = (
        "logits = logit_scale * f @ text.T + alpha * exp(-beta * (1 - f @ keys.T)) @ values, f L2-normalised"
    )
    if not fine_tune:
        alpha, beta = searched(keys)
        details["alpha"], details["beta"] = alpha, beta
        details["searched"] = val is not None and s.search
        return Fitted(
            model(keys, alpha, beta),
            None,
            TuneResult(),
            {
                "keys": keys,
                "values": values,
                "text": text,
                **_scalars(alpha=alpha, beta=beta, logit_scale=scale),
            },
            formula,
            None,
            0,
            "training-free",
            details,
        )

    n = len(labels)
    per_epoch = batches_per_epoch(n, s.batch_size)
    run.ctx.progress.start(per_epoch * s.epochs)

    def view(epoch: int) -> torch.Tensor:  # fresh views, after the ones averaged into the keys
        return views.encode(s.augment_views + epoch) if views is not None else real.features

    validate = None
    if val is not None:

        def validate(trained: torch.Tensor) -> float:
            with torch.no_grad():
                return _top1(model(trained, s.alpha, s.beta)(val), val, classes)

    reported, other, result = tip.fine_tune(
        keys,
        values,
        text,
        scale,
        labels,
        view,
        alpha=float(s.alpha),
        beta=float(s.beta),
        epochs=int(s.epochs),
        lr=s.lr,
        weight_decay=s.weight_decay,
        eps=s.eps,
        batch_size=s.batch_size,
        seed=run.plan.seed,
        validate=validate,
        keep_best=s.selection == "best-validation",
        on_step=run.ctx.progress.advance,
    )
    alpha, beta = searched(reported)
    details["alpha"], details["beta"] = alpha, beta
    details["searched"] = val is not None and s.search
    other_model = None
    if other is not None:
        other_model = model(other, *searched(other))
    return Fitted(
        model(reported, alpha, beta),
        other_model,
        result,
        {
            "keys": reported,
            "values": values,
            "text": text,
            **_scalars(alpha=alpha, beta=beta, logit_scale=scale),
        },
        formula + "; keys trained (Tip-Adapter-F)",
        s.lr,
        int(s.epochs),
        "AdamW, cosine over every iteration to 0 (CosineAnnealingLR)",
        details,
    )


def _scalars(**values: float) -> dict[str, torch.Tensor]:
    return {k: torch.tensor([float(v)]) for k, v in values.items()}


# ----------------------------------------------------------------------------------------------- CoOp


def _coop(run: Any, scale: float, val: Any, real: Any) -> Fitted:
    from synthrec.workers import coop
    from synthrec.workers.shot_views import COOP_SCALE

    s = run.plan.coop
    classes = len(run.labels)
    learner = coop.PromptLearner(
        run.clip.model,
        run.clip.tokenizer,
        run.labels.head_names,
        context_tokens=s.context_tokens,
        context_init=s.context_init,
        class_specific=s.class_specific,
        position=s.class_token_position,
        init_std=s.init_std,
        seed=run.plan.seed,
    )
    views = _views(run, real, COOP_SCALE) if s.augment else None

    def view(epoch: int) -> torch.Tensor:
        return views.encode(epoch) if views is not None else real.features

    validate = None
    if val is not None:

        def validate(embeddings: torch.Tensor) -> float:
            return _top1(scale * val.features.float() @ embeddings.T, val, classes)

    run.ctx.progress.start(batches_per_epoch(len(real.labels), s.batch_size) * s.epochs)
    reported, other, result = coop.train(
        run.clip.model,
        learner,
        scale,
        real.labels,
        view,
        s,
        run.plan.seed,
        autocast=run.clip.autocast,
        validate=validate,
        on_step=run.ctx.progress.advance,
    )

    def model(embeddings: torch.Tensor) -> Logits:
        return lambda fs: scale * F.normalize(fs.features.float(), dim=-1) @ embeddings.T

    return Fitted(
        model(reported),
        model(other) if other is not None else None,
        result,
        {
            "weight": (scale * reported).contiguous(),
            "bias": torch.zeros(classes),
            "context": learner.ctx.detach().float().contiguous(),
        },
        "logits = normalize(x) @ weight.T + bias (weight = logit_scale * the prompts' text features)",
        s.lr,
        int(s.epochs),
        f"SGD, {s.warmup_epochs} epoch(s) at {s.warmup_lr}, then cosine per epoch (Dassl)",
        {"context_tokens": learner.context_tokens, "class_names": list(run.labels.head_names)},
    )
