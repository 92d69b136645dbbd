"""Tiny random-weight models and a tiny "real" dataset, built offline, for tests and the offline demo.

``build_tiny_models(DIR)`` writes four folders that the real loaders open exactly as they would open the
paper's models:

- ``sd/``   a Stable Diffusion pipeline (tiny CLIP BPE tokenizer, CLIPTextModel, UNet, VAE, DDIM);
- ``clip/`` an open_clip ViT (``open_clip_config.json`` + ``open_clip_model.safetensors``);
- ``t5/``   a T5 word-to-sentence model with a sentencepiece tokenizer trained on the spot, briefly
            trained on class -> caption pairs so that it writes varied, mostly sensible sentences;
- ``real/`` a procedurally drawn ImageFolder dataset for the ``tiny`` label space.

The weights are RANDOM (the T5 saw a few hundred steps on template captions): images are coloured noise,
and any accuracy measured with these models is meaningless. Nothing here touches the network.

torch, diffusers, transformers, open_clip and sentencepiece are imported inside functions, so importing
this module stays cheap for the core.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import math
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from synthrec.tiny.layout import (
    _COMPONENTS,
    BUILDER_VERSION,
    IMAGE_SIZE,
    MANIFEST_NAME,
    RANDOM_WEIGHTS_NOTICE,
    README_NAME,
    REAL_TEST_PER_CLASS,
    REAL_TRAIN_PER_CLASS,
    TINY_CLASSES,
    TinyModels,
    _library_versions,
    default_tiny_dir,
)
from synthrec.tiny.real import build_real_dataset

log = logging.getLogger(__name__)

_SD_BPE_MERGES = 1000  # a consistent prefix of OpenAI's BPE: 1,514 tokens, enough for English prompts
# Stable Diffusion v1's noise schedule (its scheduler_config.json), for the tiny SD and the GPU bench.
SD_DDIM_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}
_T5_TRAIN_STEPS = 200
_T5_BATCH = 32

# Scene captions in the spirit of CommonGen (concept -> sentence), next to CLIP's 7 short photo templates.
_SCENE_TEMPLATES: tuple[str, ...] = (
    "a {} on a wooden table.",
    "a {} in the middle of a busy street.",
    "a white {} hovering over a beach.",
    "a small {} next to a window.",
    "a {} lying on the grass in a park.",
    "a child holding a {} in the garden.",
    "a {} on a shelf in the kitchen.",
    "a large {} in front of a house.",
    "a {} floating in the water.",
    "a {} in the snow.",
    "two people looking at a {}.",
    "a {} on the floor of a room.",
)


def ensure_tiny_models() -> TinyModels:
    """The tiny models behind tiny://sd, tiny://clip, tiny://t5 and tiny://real/..., built on first use."""
    return build_tiny_models(default_tiny_dir())


def build_tiny_models(out_dir: Path | str, *, force: bool = False, seed: int = 0) -> TinyModels:
    """Build the tiny models and dataset under ``out_dir`` (deterministic for a given ``seed``).

    Returns at once when a complete build of the same builder version, seed and library versions is
    there, unless ``force``. Only ``sd/``, ``clip/``, ``t5/``, ``real/``, ``README.txt`` and
    ``tiny-models.json`` under ``out_dir`` are ever written or removed; the manifest is written last, so
    an interrupted build is rebuilt next time. Concurrent builders of the same folder wait for each other.
    """
    models = TinyModels.at(out_dir)
    models.root.mkdir(parents=True, exist_ok=True)
    if not force and models.is_built(seed=seed):
        log.debug("tiny models already built in %s", models.root)
        return models
    from synthrec.storage import exclusive_lock

    with exclusive_lock(models.root / ".tiny-models.lock"):
        if not force and models.is_built(seed=seed):  # another process finished while we waited
            return models
        _build_locked(models, seed)
    return models


def _build_locked(models: TinyModels, seed: int) -> None:
    started = time.perf_counter()
    for name in (MANIFEST_NAME, README_NAME):
        (models.root / name).unlink(missing_ok=True)
    for name in _COMPONENTS:
        shutil.rmtree(getattr(models, name), ignore_errors=True)

    log.info("building tiny random-weight models in %s (seed %d)", models.root, seed)
    timings: dict[str, float] = {}
    parameters: dict[str, int] = {}
    t = time.perf_counter()
    build_real_dataset(models.real, seed)
    timings["real"] = time.perf_counter() - t

    import torch

    # Leave the caller's RNG state alone, and keep transformers' "Writing model shards" bars off stderr.
    with torch.random.fork_rng(devices=[]), _quiet_progress_bars():
        t = time.perf_counter()
        parameters.update(_build_sd(models.sd, seed))
        timings["sd"] = time.perf_counter() - t
        t = time.perf_counter()
        parameters.update(_build_clip(models.clip, seed))
        timings["clip"] = time.perf_counter() - t
        t = time.perf_counter()
        t5_params, t5_training = _build_t5(models.t5, seed)
        parameters.update(t5_params)
        timings["t5"] = time.perf_counter() - t

    manifest = {
        "builder": "synthrec.tiny",
        "builder_version": BUILDER_VERSION,
        "seed": seed,
        "random_weights": True,
        "notice": RANDOM_WEIGHTS_NOTICE,
        "paths": {name: name for name in _COMPONENTS},
        "parameters": parameters,
        "classes": list(TINY_CLASSES),
        "real_images_per_class": {"train": REAL_TRAIN_PER_CLASS, "test": REAL_TEST_PER_CLASS},
        "image_size": IMAGE_SIZE,
        "t5_training": t5_training,
        "versions": _library_versions(),
        "build_seconds": {k: round(v, 2) for k, v in timings.items()}
        | {"total": round(time.perf_counter() - started, 2)},
    }
    _make_readable(models)
    (models.root / README_NAME).write_text(_readme(models, seed))
    tmp = models.root / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(models.root / MANIFEST_NAME)  # last: marks the build complete
    log.info("tiny models built in %.1f s: %s", time.perf_counter() - started, models.root)


def _make_readable(models: TinyModels) -> None:
    # safetensors writes 0600 files; a worker container running as another user must still read them.
    for name in _COMPONENTS:
        for path in getattr(models, name).rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` intra-op threads. One thread makes the T5 training independent of the core count
    (same bytes on every machine) and, on a busy 2-core host, is also faster: these kernels are so small
    that OpenMP barriers stall whenever one core is taken."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _count(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


# --- Stable Diffusion ------------------------------------------------------------------------------


def _write_tiny_clip_bpe(folder: Path, n_merges: int) -> None:
    """vocab.json + merges.txt laid out like OpenAI's SimpleTokenizer, from the first ``n_merges`` merges."""
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode

    with gzip.open(open_clip.tokenizer.default_bpe()) as fh:
        lines = fh.read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]][:n_merges]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))


def _build_sd(out: Path, seed: int) -> dict[str, int]:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        _write_tiny_clip_bpe(Path(tmp), _SD_BPE_MERGES)
        tokenizer = CLIPTokenizer.from_pretrained(tmp, model_max_length=77)

    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=32,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        norm_num_groups=32,
        cross_attention_dim=32,
        attention_head_dim=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    )
    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=IMAGE_SIZE,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    )  # two blocks: vae_scale_factor 2, so 64 px images have 32x32 latents
    scheduler = DDIMScheduler(**SD_DDIM_CONFIG)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    return {"sd.unet": _count(unet), "sd.vae": _count(vae), "sd.text_encoder": _count(text_encoder)}


# --- open_clip -------------------------------------------------------------------------------------


def _build_clip(out: Path, seed: int) -> dict[str, int]:
    import torch
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    model_cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 2, "width": 64, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
    }
    preprocess_cfg = {
        "size": IMAGE_SIZE,
        "mode": "RGB",
        "mean": list(OPENAI_DATASET_MEAN),
        "std": list(OPENAI_DATASET_STD),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
        "fill_color": 0,
    }
    torch.manual_seed(seed + 3)
    model = CLIP(**model_cfg)
    with torch.no_grad():  # a trained CLIP's temperature: logit scale 100, as in the paper's zero-shot
        model.logit_scale.fill_(math.log(100.0))
    out.mkdir(parents=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, out / "open_clip_model.safetensors")
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return {"clip": _count(model)}


# --- T5 --------------------------------------------------------------------------------------------


def _caption_templates() -> list[str]:
    # CLIP's 7 short ImageNet templates plus the scene captions: with CLIP's 80 templates 200 steps are not
    # enough for the model to learn them, and about half its sentences came out garbled.
    from open_clip.zero_shot_metadata import SIMPLE_IMAGENET_TEMPLATES

    return [t("{}") for t in SIMPLE_IMAGENET_TEMPLATES] + list(_SCENE_TEMPLATES)


def _caption_classes() -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES) + list(TINY_CLASSES)


def _train_sentencepiece(out: Path) -> None:
    import sentencepiece as spm

    templates = _caption_templates()
    classes = _caption_classes()
    sentences = [t.format(c) for c in classes for t in templates] + ["a " + c for c in classes]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,  # not model_prefix: that path would be stored in the model, so builds differ
        vocab_size=1000,
        model_type="unigram",
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,  # T5's id layout
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        num_threads=1,  # deterministic piece scores
        minloglevel=2,  # the C++ trainer otherwise writes pages to stderr
    )
    (out / "spiece.model").write_bytes(model.getvalue())


def _build_t5(out: Path, seed: int) -> tuple[dict[str, int], dict[str, Any]]:
    import torch
    from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer

    out.mkdir(parents=True)
    _train_sentencepiece(out)
    tokenizer = T5Tokenizer.from_pretrained(str(out), extra_ids=100)
    torch.manual_seed(seed + 4)
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
    training = _train_t5(model, tokenizer, seed)
    model.eval()
    # Room for a long class name's caption; also silences the "model-agnostic default max_length" warning.
    # max_length, not max_new_tokens: a caller's own max_length would lose against a stored max_new_tokens.
    model.generation_config.max_length = 40
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return {"t5": _count(model)}, training


def _train_t5(model: Any, tokenizer: Any, seed: int) -> dict[str, Any]:
    """A few hundred AdamW steps on "a <class>" -> caption pairs (the paper feeds "a <class>" to T5)."""
    import torch

    rng = random.Random(seed + 5)
    templates = _caption_templates()
    classes = _caption_classes()
    # Half of each batch is the tiny label space, which the demo and the tests ask about.
    picks = [
        rng.choice(TINY_CLASSES) if i % 2 == 0 else rng.choice(classes)
        for i in range(_T5_TRAIN_STEPS * _T5_BATCH)
    ]
    sources = tokenizer(["a " + c for c in picks], padding="longest", return_tensors="pt")
    captions = [rng.choice(templates).format(c) for c in picks]
    targets = tokenizer(captions, padding="longest", return_tensors="pt")
    labels = targets.input_ids.masked_fill(targets.attention_mask == 0, -100)

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0, fused=True)
    model.train()
    first = float("nan")
    started = time.perf_counter()
    with _torch_threads(1):
        for step in range(_T5_TRAIN_STEPS):
            rows = slice(step * _T5_BATCH, (step + 1) * _T5_BATCH)
            src_len = int(sources.attention_mask[rows].sum(1).max())
            tgt_len = int(targets.attention_mask[rows].sum(1).max())
            loss = model(
                input_ids=sources.input_ids[rows, :src_len].contiguous(),
                attention_mask=sources.attention_mask[rows, :src_len].contiguous(),
                labels=labels[rows, :tgt_len].contiguous(),
            ).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step == 0:
                first = loss.item()
    last = loss.item()
    seconds = time.perf_counter() - started
    log.info("tiny T5: %d steps in %.1f s, loss %.2f -> %.2f", _T5_TRAIN_STEPS, seconds, first, last)
    return {
        "steps": _T5_TRAIN_STEPS,
        "batch_size": _T5_BATCH,
        "first_loss": round(first, 4),
        "final_loss": round(last, 4),
        "seconds": round(seconds, 2),
    }


# --- README ----------------------------------------------------------------------------------------


def _readme(models: TinyModels, seed: int) -> str:
    return f"""Tiny offline models for synthrec (builder version {BUILDER_VERSION}, seed {seed})

WARNING: {RANDOM_WEIGHTS_NOTICE}

Rebuild with:  synthrec tiny-models {models.root}  [--force]

sd/    Stable Diffusion (64 px, DDIM, tiny BPE tokenizer, no safety checker)
         diffusers.AutoPipelineForText2Image.from_pretrained("{models.sd}")
         diffusers.AutoPipelineForImage2Image.from_pretrained("{models.sd}")
clip/  open_clip ViT, 64 px input, embed dim 32, logit scale 100
         open_clip.create_model_and_transforms("local-dir:{models.clip}")
         open_clip.get_tokenizer("local-dir:{models.clip}")
t5/    T5 word-to-sentence model (input "a <class>"), sentencepiece tokenizer
         transformers.AutoTokenizer.from_pretrained("{models.t5}")
         transformers.AutoModelForSeq2SeqLM.from_pretrained("{models.t5}")
real/  ImageFolder dataset, train/<class>/*.png and test/<class>/*.png, {IMAGE_SIZE}x{IMAGE_SIZE} RGB,
       {REAL_TRAIN_PER_CLASS} train and {REAL_TEST_PER_CLASS} test images per class; classes in order:
       {", ".join(TINY_CLASSES)} (folder names use '_' for spaces)

Model references: {", ".join(f"{k}={v}" for k, v in models.as_refs().items())}
"""
