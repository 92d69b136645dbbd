"""The toy world's text-to-image model: a standard diffusers Stable Diffusion folder, trained on CPU.

Components (all stock diffusers/transformers classes, so the generate stage loads it like SD):
``AutoencoderKL`` (64 px <-> 7 x 16 x 16 latents, a VAE factor of 4), ``UNet2DConditionModel``
(v-prediction, cross-attention plus a pooled-text embedding added to the time embedding), ``CLIPTextModel``
with a CLIP BPE tokenizer (the first 10,000 of OpenAI's merges, so every word of the world is one or two
tokens) and a DDIM scheduler with Stable Diffusion's noise schedule.

What makes it trainable in a few CPU minutes: the latent space is DESIGNED instead of discovered. A
picture's latent is its colour averaged over 4 x 4 pixel cells (3 channels) plus one channel per shape
holding how much of each cell the object of that shape covers. The outline is in the latent (a 14 px
shape still spans 3-4 cells) and so is the shape's name (which channel), so the UNet learns to draw a
silhouette of the right kind and the decoder only sharpens it. The encoder and decoder of the autoencoder
are trained by plain regression to and from that latent (neither has to invent a code) and the UNet
learns the distribution of designed latents given a caption; the two halves need nothing from each other
and train in parallel processes (``build_sd_part``, then ``assemble_sd``). Generations are smoother than
the drawn pictures and sometimes wrong: 8 % of the generator's training captions name a class that
differs from the picture in colour or shape, and a small model confuses near shapes (a rounded square).
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from synthrec.toyworld import captions
from synthrec.toyworld.training import NoProgress, Progress, ema_update, lr_factor, set_lr
from synthrec.toyworld.world import IMAGE_SIZE, SHAPES, WORLD_CLASSES, Scene, draw_class, thing_alpha

log = logging.getLogger(__name__)

RESOLUTION = IMAGE_SIZE  # the generator draws 64 px pictures from 16 x 16 latents (VAE factor 4)
LATENT_CELL = 4  # pixels per latent cell: a 14 px shape still spans 3-4 cells, so its outline survives
LATENT_CHANNELS = 3 + len(SHAPES)  # colour (3) + one coverage channel per shape
CODE_SCALE = 2.0  # coverage 0..1 -> 0..2, as loud as the colours in -1..1
TOKENIZER_MERGES = 10_000  # OpenAI BPE prefix: 10,514 tokens; 'circle', 'yellow', 'background' are one token
MAX_TOKENS = 32


@dataclass(frozen=True)
class SdRecipe:
    """Sizes and training lengths (recorded in the manifest)."""

    pictures: int = 4000
    wrong_caption_rate: float = 0.08
    empty_caption_rate: float = 0.1  # classifier-free guidance needs an unconditional model too
    vae_channels: tuple[int, ...] = (8, 16, 32)  # 64, 32, 16 px: the decoder sharpens outlines, locally
    vae_steps: int = 600
    vae_batch: int = 16
    vae_lr: float = 2e-3
    unet_channels: tuple[int, ...] = (32, 64, 64)  # 16, 8, 4 cells; no attention at 16 x 16 (cheap)
    text_width: int = 64
    unet_steps: int = 800
    unet_batch: int = 48
    unet_lr: float = 2e-3
    min_snr: float = 5.0
    ema: float = 0.99


def designed_latent(pixels: Any, scene: Scene) -> Any:
    """The latent of a drawn picture (5 x 8 x 8 float32): cell colours in -1..1 and the shape code.
    ``pixels`` is the picture (64 x 64 x 3, -1..1); the coverage comes from the drawing program's masks."""
    import numpy as np

    n, k = RESOLUTION // LATENT_CELL, LATENT_CELL
    colour = pixels.reshape(n, k, n, k, 3).mean((1, 3))
    code = np.zeros((n, n, len(SHAPES)), dtype=np.float32)
    for thing in scene.things:
        cover = thing_alpha(thing.shape, thing.box).reshape(n, k, n, k).mean((1, 3))
        code[..., SHAPES.index(thing.shape)] += cover
    return np.concatenate([colour, code * CODE_SCALE], -1).transpose(2, 0, 1).astype(np.float32)


@dataclass
class _Pictures:
    pixels: Any  # [N, 3, 64, 64] float32 in -1..1
    latents: Any  # [N, 5, 8, 8]
    masks: Any  # [N, 1, 64, 64] object coverage
    captions: list[str]


def _draw_pictures(rng: Any, recipe: SdRecipe) -> _Pictures:
    import numpy as np
    import torch

    pixels, latents, masks, texts = [], [], [], []
    for i in range(recipe.pictures):
        name = WORLD_CLASSES[i % len(WORLD_CLASSES)]
        image, scene = draw_class(rng, name)
        x = np.asarray(image, dtype=np.float32) / 127.5 - 1
        pixels.append(x.transpose(2, 0, 1))
        latents.append(designed_latent(x, scene))
        masks.append(np.max([thing_alpha(t.shape, t.box) for t in scene.things], axis=0)[None])
        said = captions.confusable(rng, name) if rng.random() < recipe.wrong_caption_rate else name
        caption = captions.generator_caption(rng, scene, said)
        texts.append("" if rng.random() < recipe.empty_caption_rate else caption)
    return _Pictures(
        torch.from_numpy(np.stack(pixels)),
        torch.from_numpy(np.stack(latents)),
        torch.from_numpy(np.stack(masks)),
        texts,
    )


def _vae(recipe: SdRecipe) -> Any:
    from diffusers import AutoencoderKL

    levels = len(recipe.vae_channels)
    assert 2 ** (levels - 1) == LATENT_CELL
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=LATENT_CHANNELS,
        block_out_channels=recipe.vae_channels,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=RESOLUTION,
        mid_block_add_attention=False,
        scaling_factor=1.0,  # designed latents are already at unit-ish scale
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
    )


def _train_vae(vae: Any, data: _Pictures, recipe: SdRecipe, gen: Any, progress: Progress) -> dict[str, float]:
    """Encoder -> designed latent (MSE, a small fixed variance); designed latent (+ noise, as a UNet's output
    has) -> picture (L1, object pixels weighted 6x: they are few but they are what matters)."""
    import torch

    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    n = len(data.captions)
    vae.train()
    progress.start("autoencoder", recipe.vae_steps)
    first = last = {}
    for step in range(recipe.vae_steps):
        set_lr(optimizer, recipe.vae_lr * lr_factor(step, recipe.vae_steps, 30))
        rows = torch.randint(0, n, (recipe.vae_batch,), generator=gen)
        x, z, mask = data.pixels[rows], data.latents[rows], data.masks[rows]
        mean, logvar = vae.quant_conv(vae.encoder(x)).chunk(2, dim=1)
        encode = torch.nn.functional.mse_loss(mean, z) + 0.01 * ((logvar + 7) ** 2).mean()
        noisy = z + 0.05 * torch.randn(z.shape, generator=gen)
        weight = 1 + 5 * mask
        decode = (weight * (vae.decode(noisy).sample - x).abs()).mean() / weight.mean()
        loss = encode + decode
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        last = {"encode": round(encode.item(), 4), "decode": round(decode.item(), 4)}
        first = first or last
        progress.advance()
    vae.eval()
    return {"first": first, "last": last}


def _tokenizer(folder: Path) -> Any:
    from transformers import CLIPTokenizer

    from synthrec.tiny.build import _write_tiny_clip_bpe

    _write_tiny_clip_bpe(folder, TOKENIZER_MERGES)
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=MAX_TOKENS)


def _train_unet(
    unet: Any, text_encoder: Any, tokens: Any, latents: Any, recipe: SdRecipe, gen: Any, progress: Progress
) -> tuple[Any, Any, dict[str, float]]:
    """v-prediction with min-SNR weighting, EMA weights returned (sampled images are much cleaner)."""
    import torch
    from diffusers import DDPMScheduler

    from synthrec.tiny import SD_DDIM_CONFIG

    schedule = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=SD_DDIM_CONFIG["beta_start"],
        beta_end=SD_DDIM_CONFIG["beta_end"],
        beta_schedule=SD_DDIM_CONFIG["beta_schedule"],
        prediction_type="v_prediction",
    )
    alphas = schedule.alphas_cumprod
    snr = alphas / (1 - alphas)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=recipe.unet_lr, weight_decay=0.0)
    ema_unet, ema_text = copy.deepcopy(unet), copy.deepcopy(text_encoder)
    n = len(latents)
    unet.train()
    text_encoder.train()
    progress.start("text-to-image UNet", recipe.unet_steps)
    first = last = 0.0
    for step in range(recipe.unet_steps):
        set_lr(optimizer, recipe.unet_lr * lr_factor(step, recipe.unet_steps, 50, floor=0.1))
        rows = torch.randint(0, n, (recipe.unet_batch,), generator=gen)
        z0 = latents[rows]
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, 1000, (len(rows),), generator=gen)
        target = schedule.get_velocity(z0, noise, t)
        hidden = text_encoder(tokens[rows]).last_hidden_state
        pred = unet(schedule.add_noise(z0, noise, t), t, encoder_hidden_states=hidden).sample
        weight = torch.clamp(snr[t], max=recipe.min_snr) / (snr[t] + 1)  # min-SNR for v-prediction
        loss = (weight * ((pred - target) ** 2).mean(dim=(1, 2, 3))).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        ema_update(ema_unet, unet, recipe.ema)
        ema_update(ema_text, text_encoder, recipe.ema)
        last = loss.item()
        first = first or last
        progress.advance()
    ema_unet.eval()
    ema_text.eval()
    return ema_unet, ema_text, {"first": round(first, 4), "last": round(last, 4)}


PARTS = ("autoencoder", "denoiser")  # trained independently (the latent is designed): two processes


def build_sd_part(
    part: str, out: Path, seed: int, recipe: SdRecipe | None = None, progress: Progress | None = None
) -> dict[str, Any]:
    """Train one half of the pipeline into ``out`` (a scratch folder): ``autoencoder`` (the VAE) or
    ``denoiser`` (the UNet, text encoder and tokenizer). Both draw the same pictures from ``seed``; neither
    needs the other, because the latent each one learns is the designed one. Returns losses and sizes."""
    import numpy as np
    import torch

    recipe = recipe or SdRecipe()
    progress = progress or NoProgress()
    data = _draw_pictures(np.random.default_rng([seed, 101]), recipe)

    def count(module: Any) -> int:
        return sum(p.numel() for p in module.parameters())

    if part == "autoencoder":
        gen = torch.Generator().manual_seed(seed * 1000 + 101)
        torch.manual_seed(seed * 1000 + 102)
        vae = _vae(recipe)
        losses = _train_vae(vae, data, recipe, gen, progress)
        vae.save_pretrained(out / "vae", safe_serialization=True)
        return {"parameters": {"vae": count(vae)}, "losses": {"autoencoder": losses}}
    if part != "denoiser":
        raise ValueError(f"unknown part {part!r}; expected one of {PARTS}")
    gen = torch.Generator().manual_seed(seed * 1000 + 104)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = _tokenizer(Path(tmp))
    tokens = tokenizer(
        data.captions, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt"
    ).input_ids  # exactly as the pipeline tokenizes a prompt
    torch.manual_seed(seed * 1000 + 103)
    text_encoder, unet = _text_encoder(recipe, tokenizer), _unet(recipe)
    unet, text_encoder, losses = _train_unet(unet, text_encoder, tokens, data.latents, recipe, gen, progress)
    unet.save_pretrained(out / "unet", safe_serialization=True)
    text_encoder.save_pretrained(out / "text_encoder", safe_serialization=True)
    tokenizer.save_pretrained(out / "tokenizer")
    return {
        "parameters": {"unet": count(unet), "text_encoder": count(text_encoder)},
        "losses": {"unet": losses},
    }


def _text_encoder(recipe: SdRecipe, tokenizer: Any) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    width = recipe.text_width
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=MAX_TOKENS,
            projection_dim=width,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def _unet(recipe: SdRecipe) -> Any:
    from diffusers import UNet2DConditionModel

    levels = len(recipe.unet_channels)
    return UNet2DConditionModel(
        sample_size=RESOLUTION // LATENT_CELL,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        layers_per_block=1,
        block_out_channels=recipe.unet_channels,
        norm_num_groups=8,
        cross_attention_dim=recipe.text_width,
        attention_head_dim=16,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
        addition_embed_type="text",  # the pooled caption conditions every ResNet block via the time embedding
        addition_embed_type_num_heads=4,
    )


def assemble_sd(parts: Path, out: Path, recipe: SdRecipe | None = None) -> dict[str, Any]:
    """The pipeline folder ``out`` from the two trained halves in ``parts`` (DDIM with SD's schedule)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from synthrec.tiny import SD_DDIM_CONFIG

    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(parts / "vae"),
        text_encoder=CLIPTextModel.from_pretrained(parts / "text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(parts / "tokenizer"),
        unet=UNet2DConditionModel.from_pretrained(parts / "unet"),
        scheduler=DDIMScheduler(**SD_DDIM_CONFIG, prediction_type="v_prediction"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    (out / "toy-world-latents.json").write_text(
        json.dumps(
            {
                "latent": f"cell colours (3 ch, mean over {LATENT_CELL}x{LATENT_CELL} px, -1..1) "
                "+ the object's coverage of the cell, one channel per shape",
                "shape_channels": list(SHAPES),
                "code_scale": CODE_SCALE,
            },
            indent=2,
        )
        + "\n"
    )
    return {"recipe": asdict(recipe or SdRecipe())}
