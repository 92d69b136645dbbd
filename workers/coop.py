"""CoOp (Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022), the prompt-learning
baseline of the paper's Figure 1, on an open_clip CLIP with both encoders frozen.

The text of class i is the token sequence (paper Eq. 2, with the class token at the end)

    t_i = [SOS] [V]_1 [V]_2 ... [V]_M [CLASS_i] [.] [EOS]

where [V]_1..M are M learned vectors in the word-embedding space (one set shared by all classes, or one
per class with ``class_specific``) and [CLASS_i] the token embeddings of the class name. g(t_i) is CLIP's
text transformer applied to t_i (plus the positional embeddings), read at the end-of-text token and
projected; the prediction is (Eq. 3)

    p(y = i | x) = exp(cos(g(t_i), f) / tau) / sum_j exp(cos(g(t_j), f) / tau),   1 / tau = logit_scale

and the context is learned with cross-entropy on the real shots. As the official ``PromptLearner``: the
prompt "X X ... X <name>." (M times X) is tokenised once; the X positions are replaced by the context, the
rest ([SOS], the name, ".", [EOS], padding) stays the frozen token embeddings. ``middle`` puts M/2 context
vectors before the name and the rest after it, ``front`` the name first. ``context_init`` initialises the
context with the token embeddings of its words (M = their number).

Optimisation (official RN50 configs, Dassl): SGD(lr 0.002, momentum 0.9, weight decay 5e-4), batch 32,
the learning rate constant at 1e-5 for the first epoch, then cosine over ``epochs`` stepped per epoch
(``lr * (1 + cos(pi * (e - warmup) / epochs)) / 2`` in epoch e), a fresh augmented view of every shot each
epoch, the last partial batch dropped when the shots fill a batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from synthrec.workers.shot_training import train_on_shots
from synthrec.workers.tuning import TuneResult


class PromptLearner(nn.Module):
    """The learned context and the frozen token embeddings of each class's prompt."""

    def __init__(
        self,
        model: Any,
        tokenizer: Callable[[list[str]], torch.Tensor],
        class_names: Sequence[str],
        *,
        context_tokens: int = 16,
        context_init: str | None = None,
        class_specific: bool = False,
        position: str = "end",
        init_std: float = 0.02,
        seed: int = 0,
    ) -> None:
        super().__init__()
        embed = model.token_embedding
        device = embed.weight.device
        if context_init:
            words = context_init.replace("_", " ").strip()
            context_tokens = len(words.split())
            with torch.no_grad():
                init = embed(tokenizer([words]).to(device))[0, 1 : 1 + context_tokens].float()
            if class_specific:
                init = init.unsqueeze(0).repeat(len(class_names), 1, 1)
            prefix = words
        else:
            shape = (
                (len(class_names), context_tokens, embed.weight.shape[1])
                if class_specific
                else (
                    context_tokens,
                    embed.weight.shape[1],
                )
            )
            gen = torch.Generator().manual_seed(seed)
            init = (torch.randn(shape, generator=gen) * init_std).to(device)
            prefix = " ".join(["X"] * context_tokens)
        self.ctx = nn.Parameter(init)
        self.context_tokens = context_tokens
        self.position = position
        names = [name.replace("_", " ") for name in class_names]
        self.tokens = tokenizer([f"{prefix} {name}." for name in names]).to(device)
        # tokens of a name alone, without [SOS] and [EOS]: how many positions the name takes
        name_tokens = tokenizer(names)
        self.name_lengths = [int((row != 0).sum()) - 2 for row in name_tokens]
        with torch.no_grad():
            embedding = embed(self.tokens).float()
        self.register_buffer("token_prefix", embedding[:, :1, :])  # [SOS]
        self.register_buffer("token_suffix", embedding[:, 1 + context_tokens :, :])  # name, ".", [EOS], pad

    def forward(self) -> torch.Tensor:
        """The prompts' input embeddings [C, L, width]."""
        classes = self.tokens.shape[0]
        ctx = self.ctx if self.ctx.dim() == 3 else self.ctx.unsqueeze(0).expand(classes, -1, -1)
        prefix, suffix = self.token_prefix, self.token_suffix
        if self.position == "end":
            return torch.cat([prefix, ctx, suffix], dim=1)
        rows = []
        half = self.context_tokens // 2
        for i, n in enumerate(self.name_lengths):
            name, rest = suffix[i : i + 1, :n], suffix[i : i + 1, n:]
            if self.position == "middle":
                parts = [prefix[i : i + 1], ctx[i : i + 1, :half], name, ctx[i : i + 1, half:], rest]
            elif self.position == "front":
                parts = [prefix[i : i + 1], name, ctx[i : i + 1], rest]
            else:
                raise ValueError(f"unknown class token position {self.position!r}")
            rows.append(torch.cat(parts, dim=1))
        return torch.cat(rows, dim=0)


def encode_prompts(model: Any, prompts: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP's text encoder from input embeddings: what ``model.encode_text(tokens)`` does after its token
    lookup (positional embeddings, transformer, final norm, end-of-text pooling, projection)."""
    from open_clip.model import text_global_pool

    cast = model.transformer.get_cast_dtype()
    x = prompts.to(cast) + model.positional_embedding.to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    projection = model.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, nn.Linear) else x @ projection


def class_embeddings(model: Any, learner: PromptLearner) -> torch.Tensor:
    """[C, D] L2-normalised text features of every class's prompt."""
    return F.normalize(encode_prompts(model, learner(), learner.tokens).float(), dim=-1)


def epoch_lr(epoch: int, base: float, epochs: int, warmup_epochs: int, warmup_lr: float) -> float:
    """The learning rate of (0-based) ``epoch``: Dassl's constant warmup, then its cosine, recounted."""
    if epoch < warmup_epochs:
        return warmup_lr
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / epochs)) * base


def train(
    model: Any,
    learner: PromptLearner,
    logit_scale: float,
    labels: torch.Tensor,
    view: Callable[[int], torch.Tensor],
    settings: Any,
    seed: int,
    *,
    autocast: Callable[[], Any],
    validate: Callable[[torch.Tensor], float] | None = None,
    on_step: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, TuneResult]:
    """Learn the context. ``view(epoch)`` gives the shots' L2-normalised image features for that epoch;
    ``validate(class_embeddings)`` the validation top-1. Returns the reported class embeddings (the last
    epoch's, or with ``settings.selection`` best-validation the best epoch's), the other ones when there
    is a validation set, and the curve."""
    optimizer = torch.optim.SGD(
        [learner.ctx], lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )

    def loss(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast():
            text = class_embeddings(model, learner)
        return F.cross_entropy(logit_scale * f.float() @ text.float().T, y)

    def state() -> torch.Tensor:
        with torch.no_grad(), autocast():
            return class_embeddings(model, learner).float()

    def lr_at(epoch: int, _step: int) -> float:
        return epoch_lr(epoch, settings.lr, settings.epochs, settings.warmup_epochs, settings.warmup_lr)

    return train_on_shots(
        optimizer,
        labels,
        view,
        loss,
        state,
        phase="coop",
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        seed=seed,
        lr_at=lr_at,
        validate=validate,
        keep_best=settings.selection == "best-validation",
        on_step=on_step,
    )
