"""The toy world's word-to-sentence model for Language Enhancement: a tiny T5 trained on "a <class>" ->
a sentence about that class (``captions.sentence``: sizes, places, backgrounds, everyday contexts), with a
sentencepiece tokenizer trained on the same sentences. Sampled as the prompts stage samples it, it writes
varied sentences that contain the class name.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from synthrec.toyworld import captions
from synthrec.toyworld.training import NoProgress, Progress, lr_factor, set_lr
from synthrec.toyworld.world import WORLD_CLASSES


@dataclass(frozen=True)
class T5Recipe:
    steps: int = 300
    batch: int = 32
    lr: float = 3e-3
    vocab: int = 300


def _sentencepiece(out: Path, sentences: list[str], vocab: int) -> None:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,  # not model_prefix: that path would be stored in the model, so builds differ
        vocab_size=vocab,
        hard_vocab_limit=False,  # the world has few words: as many pieces as the sentences hold
        model_type="bpe",  # whole words of the world become single pieces
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,  # T5's id layout
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        num_threads=1,  # deterministic piece scores
        minloglevel=2,
    )
    (out / "spiece.model").write_bytes(model.getvalue())


def build_t5(
    out: Path, seed: int, recipe: T5Recipe | None = None, progress: Progress | None = None
) -> dict[str, Any]:
    import numpy as np
    import torch
    from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer

    from synthrec.tiny.build import _torch_threads

    recipe = recipe or T5Recipe()
    progress = progress or NoProgress()
    rng = np.random.default_rng([seed, 301])
    picks = [WORLD_CLASSES[int(rng.integers(len(WORLD_CLASSES)))] for _ in range(recipe.steps * recipe.batch)]
    targets = [captions.sentence(rng, name) for name in picks]
    out.mkdir(parents=True)
    _sentencepiece(out, targets + [f"a {name}" for name in WORLD_CLASSES], recipe.vocab)
    tokenizer = T5Tokenizer.from_pretrained(str(out), extra_ids=100)
    torch.manual_seed(seed * 1000 + 302)
    model = T5ForConditionalGeneration(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=64,
            d_kv=16,
            d_ff=128,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            dropout_rate=0.0,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
    )
    sources = tokenizer([f"a {name}" for name in picks], padding="longest", return_tensors="pt")
    encoded = tokenizer(targets, padding="longest", return_tensors="pt")
    labels = encoded.input_ids.masked_fill(encoded.attention_mask == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.0)
    model.train()
    progress.start("word-to-sentence T5", recipe.steps)
    first = last = 0.0
    with _torch_threads(1):  # tiny kernels: one thread is as fast, and the same bytes on every machine
        for step in range(recipe.steps):
            set_lr(optimizer, recipe.lr * lr_factor(step, recipe.steps, 20, floor=0.1))
            rows = slice(step * recipe.batch, (step + 1) * recipe.batch)
            src = int(sources.attention_mask[rows].sum(1).max())
            tgt = int(encoded.attention_mask[rows].sum(1).max())
            loss = model(
                input_ids=sources.input_ids[rows, :src].contiguous(),
                attention_mask=sources.attention_mask[rows, :src].contiguous(),
                labels=labels[rows, :tgt].contiguous(),
            ).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            last = loss.item()
            first = first or last
            progress.advance()
    model.eval()
    model.generation_config.max_length = 40
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return {
        "parameters": {"t5": sum(p.numel() for p in model.parameters())},
        "losses": {"first": round(first, 4), "last": round(last, 4)},
        "recipe": asdict(recipe),
    }
