"""Generate-stage throughput on a GPU with an SD-class model, as a share of the FLOP ceiling.

Builds a Stable Diffusion 1.5 (or 2.1-base) architecture with RANDOM weights directly on the device (no
download; random weights cost the same FLOPs as trained ones), saves it as a diffusers folder, and runs
the real generate worker on it (prompts + generate stages, run_stage with task files, file:// output):
batched across prompts, fp16 + SDPA, optional torch.compile, background JPEG/tar writer.

The FLOP ceiling follows performance-anchors.md §2.5:

    FLOPs_per_image = unet_evals x (2 if CFG else 1) x UNet_FLOPs(res) + VAE_decoder_FLOPs(res)
                      + (2 if CFG else 1) x text_encoder_FLOPs
    ceiling_img_per_s = peak_dense_fp16_FLOPS / FLOPs_per_image
    share = measured_img_per_s / ceiling_img_per_s

FLOPs are counted with torch.utils.flop_counter (2 per multiply-accumulate; convolutions, linear layers
and attention matmuls) for one forward at batch 1 on the meta device; unet_evals is the scheduler's number
of timesteps for ``--steps``. The peak comes from a small table keyed by the device name (or --peak-tflops).
SD 1.5 at 512 px counts 803 GFLOPs per UNet forward and 2,515 per VAE decode, as in the anchors.

    python bench/generate_gpu.py                                   # SD 1.5, 512 px, fp16, batch 16, 20 steps
    python bench/generate_gpu.py --batch-size 32 --compile --images 512
    python bench/generate_gpu.py --arch sd21 --batch-size 8
    python bench/generate_gpu.py --smoke                           # tiny config on the CPU: checks the path

One warm-up run of the worker (cuDNN autotuning, compile caches), then ``--rounds`` measured runs of
``--images`` each. Each run's steady rate is its own (images after its first batch over the time after
it: one loaded and compiled pipeline, so neither warm-up nor compilation is in it); the headlines are
medians of per-round values with their spread (bench/rounds.py): the steady rate's share of the FLOP
ceiling, from the datasheet peak (table below: the H200 NVL and H100 NVL are not the SXM parts) and
from the dense matmul rate measured here; and generation end to end over model only (the time inside
pipeline calls over the generation's wall time). It answers how close the worker gets to the hardware
on this architecture with random weights; not image quality, nor a trained checkpoint's load time.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from machine import cpu_name  # bench/machine.py: this script's folder is on sys.path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate_cpu import dataset_spec, run_stage_in_process

# Dense FP16/BF16 tensor-core peaks, TFLOPS (performance-anchors.md §2.4; vendor datasheets otherwise).
# The first key contained in torch.cuda.get_device_name() wins, so the specific names come first.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("GH200", 989.4),  # before "H200", which its name contains
    ("H200 NVL", 835.5),  # the PCIe card: 1,671 TFLOPS with sparsity, half that dense (datasheet)
    ("H200", 989.4),  # SXM ("NVIDIA H200"): the same tensor cores and clocks as the H100 SXM
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.2),  # FP32 accumulate
    ("V100", 125.0),
    ("T4", 65.0),
)

ARCHS: dict[str, dict[str, Any]] = {
    "sd15": {
        "unet": {
            "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            "block_out_channels": (320, 640, 1280, 1280),
            "layers_per_block": 2,
            "cross_attention_dim": 768,
            "attention_head_dim": 8,
        },
        "text": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "hidden_act": "quick_gelu",
            "projection_dim": 768,
        },
    },
    "sd21": {  # SD 2.1-base (512 px)
        "unet": {
            "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            "block_out_channels": (320, 640, 1280, 1280),
            "layers_per_block": 2,
            "cross_attention_dim": 1024,
            "attention_head_dim": (5, 10, 20, 20),
            "use_linear_projection": True,
        },
        "text": {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 23,
            "num_attention_heads": 16,
            "hidden_act": "gelu",
            "projection_dim": 512,
        },
    },
    "tiny": {  # the --smoke configuration (synthrec.tiny's)
        "unet": {
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
            "block_out_channels": (32, 64),
            "layers_per_block": 1,
            "norm_num_groups": 32,
            "cross_attention_dim": 32,
            "attention_head_dim": 8,
        },
        "text": {
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "projection_dim": 32,
        },
    },
}
SD_VAE = {
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
}
TINY_VAE = {
    "block_out_channels": (32, 64),
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "up_block_types": ("UpDecoderBlock2D",) * 2,
    "layers_per_block": 1,
    "norm_num_groups": 32,
}


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_TFLOPS:
        if key in device_name:
            return value
    return None


def build_components(arch: str, resolution: int, device: str, dtype: Any) -> dict[str, Any]:
    """Random-weight UNet, VAE, text encoder, tokenizer and scheduler, created on ``device``."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from synthrec.tiny.build import (
        SD_DDIM_CONFIG,
        _write_tiny_clip_bpe,  # the offline tokenizer the tiny models use
    )

    with tempfile.TemporaryDirectory() as tmp:
        _write_tiny_clip_bpe(Path(tmp), 1000)  # a consistent prefix of OpenAI's BPE; ids fit any vocab
        tokenizer = CLIPTokenizer.from_pretrained(tmp, model_max_length=77)
    vae_cfg = TINY_VAE if arch == "tiny" else SD_VAE
    scale = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=resolution // scale, in_channels=4, out_channels=4, **ARCHS[arch]["unet"]
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, sample_size=resolution, **vae_cfg
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408,
                max_position_embeddings=77,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                **ARCHS[arch]["text"],
            )
        )
    scheduler = DDIMScheduler(**SD_DDIM_CONFIG)
    return {
        "unet": unet.to(dtype),
        "vae": vae.to(dtype),
        "text_encoder": text_encoder.to(dtype),
        "tokenizer": tokenizer,
        "scheduler": scheduler,
    }


def matmul_tflops(device: str, dtype: Any, n: int = 8192, iters: int = 20, rounds: int = 3) -> float:
    """The dense matmul rate this device reaches (n x n x n, ``dtype``), median of ``rounds`` after a
    warm-up: the ceiling as measured, beside the datasheet's."""
    import statistics

    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    rates = []
    for i in range(rounds + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(iters):
            a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i:  # the first is the warm-up (cuBLAS heuristics, clocks)
            rates.append(2 * n**3 * iters / (time.perf_counter() - t) / 1e12)
    return statistics.median(rates)


def count_flops(components: dict[str, Any], resolution: int) -> dict[str, float]:
    """FLOPs of one forward at batch 1 (meta device: no memory, no time), by module."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPTextModel

    unet_cfg, vae_cfg = components["unet"].config, components["vae"].config
    text_cfg = components["text_encoder"].config
    latent = resolution // (2 ** (len(vae_cfg.block_out_channels) - 1))
    out: dict[str, float] = {}
    with torch.device("meta"), torch.no_grad():
        unet = UNet2DConditionModel.from_config(unet_cfg)
        vae = AutoencoderKL.from_config(vae_cfg)
        text = CLIPTextModel(text_cfg)
        runs = {
            "unet": lambda: unet(
                torch.randn(1, 4, latent, latent),
                torch.tensor([500]),
                encoder_hidden_states=torch.randn(1, 77, unet_cfg.cross_attention_dim),
            ),
            "vae_decode": lambda: vae.decode(torch.randn(1, 4, latent, latent)),
            "text_encoder": lambda: text(torch.zeros(1, 77, dtype=torch.long)),
        }
        for name, fn in runs.items():
            counter = FlopCounterMode(display=False)
            with counter:
                fn()
            out[name] = float(counter.get_total_flops())
    return out


def unet_evaluations(model_dir: Path, scheduler: str | None, steps: int) -> int:
    """UNet calls per image for ``steps`` (one per scheduler timestep; Heun-type schedulers make more)."""
    import diffusers

    config = json.loads((model_dir / "scheduler" / "scheduler_config.json").read_text())
    cls = getattr(diffusers, scheduler or config["_class_name"])
    sched = cls.from_config(config)
    sched.set_timesteps(steps)
    return len(sched.timesteps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", choices=["sd15", "sd21"], default="sd15")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--scheduler", default="DPMSolverMultistepScheduler")
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--images", type=int, default=128, help="images in each measured run")
    parser.add_argument("--rounds", type=int, default=3, help="measured runs (after one warm-up run)")
    parser.add_argument("--dtype", default="auto", help="generator.dtype (auto: float16 on CUDA)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (generator.compile)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the device's dense peak")
    parser.add_argument("--workdir", type=Path, default=None, help="model and outputs (default: a temp dir)")
    parser.add_argument("--smoke", action="store_true", help="tiny config, 64 px, 2 steps, 8 images, CPU ok")
    args = parser.parse_args(argv)
    if args.smoke:
        args.arch, args.resolution, args.steps, args.images, args.batch_size = "tiny", 64, 2, 8, 4

    import logging

    import diffusers.utils.logging
    import torch
    import transformers.utils.logging

    from synthrec.workers.diffusion import resolve_dtype
    from synthrec.workers.runtime import select_device

    logging.basicConfig(level=logging.WARNING)
    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()  # random weights cast with .to(): expected notices
    transformers.utils.logging.disable_progress_bar()
    if args.smoke:
        torch.set_num_threads(1)  # as the other smoke runs: a busy CI host
    device = select_device()
    dtype = resolve_dtype(args.dtype, device)
    device_name = torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu ({cpu_name()})"
    peak = args.peak_tflops or peak_tflops(device_name)

    with tempfile.TemporaryDirectory(prefix="synthrec-bench-gpu-") as tmp:
        work = args.workdir or Path(tmp)
        model_dir = work / "model"
        started = time.perf_counter()
        components = build_components(args.arch, args.resolution, device, dtype)
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline(
            **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
        pipe.save_pretrained(model_dir, safe_serialization=True)
        build_s = time.perf_counter() - started
        flops = count_flops(components, args.resolution)
        del pipe, components
        if device.startswith("cuda"):
            torch.cuda.empty_cache()

        evals = unet_evaluations(model_dir, args.scheduler, args.steps)
        cfg = 2 if args.guidance > 1 else 1
        per_image = evals * cfg * flops["unet"] + flops["vae_decode"] + cfg * flops["text_encoder"]

        prompts_per_run = 8  # the tiny label space: 4 classes x 2 templates
        warm_args = argparse.Namespace(**vars(args))
        warm_args.images_per_prompt = max(1, math.ceil(2 * args.batch_size / prompts_per_run))  # 2 batches
        args.images_per_prompt = max(1, math.ceil(args.images / prompts_per_run))
        runs: list[dict[str, Any]] = []
        for i in range(args.rounds + 1):  # run 0 warms up (cuDNN autotuning, compile caches on disk)
            name = "warm-up" if i == 0 else f"round {i}"
            run_args = warm_args if i == 0 else args
            spec = dataset_spec(model_dir.as_uri(), (work / f"out-{i}").as_uri() + "/", run_args)
            run_stage_in_process(spec, "prompts", work / f"tasks-{i}")
            t = time.perf_counter()
            summary = run_stage_in_process(spec, "generate", work / f"tasks-{i}", 0)
            summary["wall_s"] = time.perf_counter() - t
            if i:
                runs.append(summary)
            print(
                f"{name}: {summary['images']} images, generation {summary['seconds_generate']:.2f} s, "
                f"steady {summary['steady_images_per_s']} img/s, model {summary['seconds_model']:.2f} s, "
                f"load {summary['seconds_load']:.2f} s",
                file=sys.stderr,
            )
        matmul = matmul_tflops(device, dtype, *((256, 2) if args.smoke else ()))

    from rounds import Ratio

    # Each round's steady rate is its own: images after its first batch over the time after it, in one
    # process with one loaded (and compiled) pipeline, so warm-up, autotuning and compilation stay out of
    # it and no difference of two runs mixes two compiled wrappers.
    ceiling = peak * 1e12 / per_image if peak else None
    measured_ceiling = matmul * 1e12 / per_image
    steady = Ratio("steady images/s", [r["steady_images_per_s"] for r in runs])
    ratios = {
        "share_of_ceiling": Ratio(
            "generation / FLOP ceiling (datasheet)", [v / ceiling for v in steady.per_round]
        )
        if ceiling
        else None,
        "share_of_measured_ceiling": Ratio(
            "generation / FLOP ceiling (measured matmul)", [v / measured_ceiling for v in steady.per_round]
        ),
        # the worker's generation (batches, uint8 copies, JPEG and tar writing, uploads) over the time its
        # pipeline calls took: 1.0 means nothing outside the model costs the GPU any time
        "end_to_end_over_model_only": Ratio(
            "generation end to end / model only", [r["seconds_model"] / r["seconds_generate"] for r in runs]
        ),
    }
    m = runs[len(runs) // 2]
    result = {
        "bench": "generate_gpu",
        "smoke": args.smoke,
        "device": device_name,
        "arch": args.arch,
        "weights": "random",
        "dtype": m.get("dtype"),
        "resolution": args.resolution,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "scheduler": args.scheduler,
        "guidance": args.guidance,
        "compile": args.compile,
        "images": m["images"],
        "rounds": args.rounds,
        "steady_images_per_s": steady.as_json(),
        "seconds_load": [r["seconds_load"] for r in runs],
        "seconds_startup": [r["seconds_startup"] for r in runs],
        "build_s": round(build_s, 1),
        "formula": {
            "unet_gflops": round(flops["unet"] / 1e9, 2),
            "vae_decode_gflops": round(flops["vae_decode"] / 1e9, 2),
            "text_encoder_gflops": round(flops["text_encoder"] / 1e9, 2),
            "unet_evals_per_image": evals,
            "cfg_factor": cfg,
            "tflops_per_image": round(per_image / 1e12, 4),
            "peak_tflops": peak,
            "measured_matmul_tflops": round(matmul, 2),
        },
        "ceiling_images_per_s": round(ceiling, 3) if ceiling else None,
        "measured_ceiling_images_per_s": round(measured_ceiling, 3),
        **{k: r.as_json() for k, r in ratios.items() if r is not None},
    }
    f = result["formula"]
    print(
        f"FLOPs/image = {evals} UNet evals x {cfg} (CFG) x {f['unet_gflops']} GF + VAE decode "
        f"{f['vae_decode_gflops']} GF + {cfg} x text {f['text_encoder_gflops']} GF "
        f"= {f['tflops_per_image']} TF"
    )
    print(
        f"{device_name}: peak {peak or 'unknown (pass --peak-tflops)'} TFLOPS (datasheet), "
        f"{matmul:.1f} TFLOPS (measured matmul)"
    )
    print(steady.text(" img/s"))
    for r in ratios.values():
        if r is not None:
            print(r.text())
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
