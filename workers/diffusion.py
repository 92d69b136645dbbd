"""Loading a diffusers text-to-image pipeline (and its image-to-image twin for Real Guidance) the way the
generate stage runs it: the right dtype per device, an optional scheduler swap, SDPA attention (diffusers'
default on torch 2), channels-last UNet and VAE decoder on CUDA and, with ``generator.compile``,
torch.compile of the denoiser and of the VAE's decode (its artifacts shared through the output store:
``synthrec.workers.compile_cache``), no safety checker (it would silently replace images with black
ones), no progress bars.

Images leave the pipeline as tensors on the device; ``HostImages`` turns them into uint8 there and copies
them to pinned host memory without waiting, so the next batch starts while the writer thread encodes.

Imports torch and diffusers: only the generate stage's model path imports this module.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from synthrec.api import Generator
from synthrec.workers.models import (
    first_line,
    quiet_hub_progress,
    quiet_library_loggers,
    resolve_model_folder,
)
from synthrec.workers.runtime import ConfigError, select_device

log = logging.getLogger("synthrec.workers.diffusion")

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class Pipelines:
    text2image: Any
    image2image: Any | None  # only with Real Guidance
    device: str
    dtype: str
    pipeline_class: str
    scheduler_class: str
    revision: str | None
    path: Path
    compiled: bool
    seconds_fetch: float = 0.0  # resolving generator.model to a local folder (download, mirror)


def resolve_dtype(requested: str, device: str) -> torch.dtype:
    """auto: float16 on CUDA, float32 elsewhere. float16 on CPU is slow and partly unsupported: float32."""
    if requested == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    if requested == "float16" and not device.startswith("cuda"):
        log.warning("generator.dtype float16 is not usable on %s; running in float32", device)
        return torch.float32
    return _DTYPES[requested]


def pipeline_class(name: str) -> Any:
    """``auto`` -> AutoPipelineForText2Image; else the diffusers pipeline class of that name."""
    import diffusers

    if name == "auto":
        return diffusers.AutoPipelineForText2Image
    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.DiffusionPipeline)):
        raise ConfigError(
            f"generator.pipeline {name!r} is not a diffusers pipeline class (diffusers "
            f"{diffusers.__version__}); use 'auto' or a class such as StableDiffusionPipeline, "
            "StableDiffusionXLPipeline, PixArtAlphaPipeline"
        )
    return cls


def scheduler_class(name: str) -> Any:
    import diffusers
    from diffusers import SchedulerMixin

    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise ConfigError(
            f"generator.scheduler {name!r} is not a diffusers scheduler class; use e.g. "
            "DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, DDIMScheduler, DDPMScheduler"
        )
    return cls


def _dtype_keyword() -> str:
    # diffusers renamed torch_dtype to dtype (the old name still works, with a FutureWarning).
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype"


def load_pipelines(
    gen: Generator,
    *,
    real_guidance: bool,
    storage_opts: dict[str, Any] | None = None,
    source: str | None = None,
    pinned: str | None = None,
) -> Pipelines:
    """Resolve ``generator.model`` (or ``source``, the model mirror's copy of it, reported as revision
    ``pinned``) and load it ready to run; ConfigError for anything the spec got wrong."""
    cls = pipeline_class(gen.pipeline)  # checked before a possibly long model download
    sched_cls = scheduler_class(gen.scheduler) if gen.scheduler else None
    fetch_started = time.perf_counter()
    path, revision = resolve_model_folder(source or gen.model, "generator.model", storage_opts)
    revision = pinned or revision
    seconds_fetch = time.perf_counter() - fetch_started
    device = select_device()
    dtype = resolve_dtype(gen.dtype, device)
    quiet_library_loggers()
    kwargs: dict[str, Any] = {_dtype_keyword(): dtype}
    if _has_component(path, "safety_checker"):
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        with quiet_hub_progress():
            t2i = cls.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, ImportError) as exc:
        raise ConfigError(
            f"generator.model {gen.model!r}: cannot load a diffusers text-to-image pipeline from {path}: "
            f"{type(exc).__name__}: {first_line(exc)}. The folder must hold a diffusers pipeline "
            "(model_index.json and its component folders); set generator.pipeline to the pipeline class "
            "if 'auto' cannot tell"
        ) from exc
    if sched_cls is not None:
        t2i.scheduler = sched_cls.from_config(t2i.scheduler.config)
    t2i = t2i.to(device)
    t2i.set_progress_bar_config(disable=True)
    compiled = False
    denoiser_name = "unet" if getattr(t2i, "unet", None) is not None else "transformer"
    denoiser = getattr(t2i, denoiser_name, None)
    vae = getattr(t2i, "vae", None)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest convolutions
        # Convolution-heavy modules run faster in NHWC on tensor cores: the UNet and the VAE decoder
        # (about 7 % of the FLOPs of a 20-step image, more of its time).
        if denoiser is not None and denoiser_name == "unet":
            denoiser.to(memory_format=torch.channels_last)
        if vae is not None:
            vae.to(memory_format=torch.channels_last)
    if gen.compile:
        # On any device (Inductor makes C++ on a CPU); artifacts come from and go to CompileCache.
        if denoiser is not None:
            setattr(t2i, denoiser_name, torch.compile(denoiser))
            compiled = True
        if vae is not None and callable(getattr(vae, "decode", None)):
            vae.decode = torch.compile(vae.decode)
            compiled = True
    i2i = None
    if real_guidance:
        from diffusers import AutoPipelineForImage2Image

        try:
            i2i = AutoPipelineForImage2Image.from_pipe(t2i)  # shares every component: no extra memory
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"generator.model {gen.model!r}: its pipeline {type(t2i).__name__} has no image-to-image "
                f"variant in diffusers ({first_line(exc)}); Real Guidance needs one (e.g. Stable Diffusion, "
                "SDXL, Kandinsky, PixArt via their Img2Img pipelines)"
            ) from exc
        i2i.set_progress_bar_config(disable=True)
    log.info(
        "loaded %s (%s) from %s on %s in %s%s",
        type(t2i).__name__,
        type(t2i.scheduler).__name__,
        gen.model,
        device,
        str(dtype).removeprefix("torch."),
        ", denoiser and VAE decoder compiled" if compiled else "",
    )
    return Pipelines(
        text2image=t2i,
        image2image=i2i,
        device=device,
        dtype=str(dtype).removeprefix("torch."),
        pipeline_class=type(t2i).__name__,
        scheduler_class=type(t2i.scheduler).__name__,
        revision=revision,
        path=path,
        compiled=compiled,
        seconds_fetch=seconds_fetch,
    )


def generation_size(pipe: Any) -> int:
    """The pipeline's native square size: what it generates when no height/width is given (its denoiser's
    sample size x the VAE scale factor, as the SD, SDXL and PixArt pipelines compute their default)."""
    denoiser = getattr(pipe, "unet", None)
    if denoiser is None:  # not `or`: a compiled module's truth value raises (it asks the module's len())
        denoiser = getattr(pipe, "transformer", None)
    sample = getattr(pipe, "default_sample_size", None)
    if sample is None and denoiser is not None:
        sample = getattr(denoiser.config, "sample_size", None)
    if isinstance(sample, (list, tuple)):
        sample = min(sample)
    scale = getattr(pipe, "vae_scale_factor", None)
    if not isinstance(sample, int) or not isinstance(scale, int):
        raise ConfigError(
            f"cannot tell the native size of {type(pipe).__name__} (no denoiser sample size or VAE scale "
            "factor); set generator.generationResolution"
        )
    return sample * scale


def _has_component(path: Path, name: str) -> bool:
    try:
        index = json.loads((path / "model_index.json").read_text())
    except (OSError, ValueError):
        return False
    value = index.get(name)
    return isinstance(value, list) and any(v is not None for v in value)


def generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per image: initial noise is drawn per image on the CPU, so an image does not
    depend on its batch, and it is the same on any GPU."""
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def center_square(image: Any, size: int) -> Any:
    """Center-crop to a square and resize to ``size`` (bicubic): the Real Guidance input."""
    from PIL import Image

    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    square = image.crop((left, top, left + side, top + side))
    if side != size:
        square = square.resize((size, size), Image.Resampling.BICUBIC)
    return square


def img2img_start(scheduler: Any, steps: int) -> Any:
    """``start(k)`` -> (timestep, alpha-bar) where diffusers' img2img starts when it runs k of ``steps``
    steps on this scheduler: the timestep ``timesteps[(steps - k) * order]`` (get_timesteps) and the level
    the scheduler's own ``add_noise`` gives there, measured as signal^2 / (signal^2 + noise^2) by noising a
    unit signal and unit noise (so sigma-scaled and alpha-scaled schedulers read alike). A copy of the
    scheduler is probed: the pipeline's stays untouched."""
    probe = type(scheduler).from_config(scheduler.config)
    if not callable(getattr(probe, "add_noise", None)):
        raise ConfigError(
            f"the generator's scheduler {type(scheduler).__name__} has no add_noise, so its img2img start "
            "level cannot be matched to the paper's; set realGuidance.strength explicitly"
        )
    probe.set_timesteps(steps)
    timesteps = probe.timesteps
    order = int(getattr(probe, "order", 1))

    def at(k: int) -> tuple[float, float]:
        index = (steps - k) * order
        t = timesteps[index : index + 1]
        if hasattr(probe, "set_begin_index"):
            probe.set_begin_index(index)
        one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
        signal = float(probe.add_noise(one, zero, t)[0])
        noise = float(probe.add_noise(zero, one, t)[0])
        return float(t[0]), signal * signal / (signal * signal + noise * noise)

    return at


# ------------------------------------------------------------------------------------ images to the host


class HostImages:
    """A batch as uint8 [B, H, W, 3], converted on the device (float [0, 1] images, rounded as diffusers'
    numpy_to_pil rounds) and copied to pinned host memory without waiting; ``numpy()`` waits for that copy
    (on the writer thread), so the main thread goes on with the next batch."""

    def __init__(self, images: torch.Tensor) -> None:
        pixels = images.float().clamp_(0, 1).mul_(255).round_().to(torch.uint8).permute(0, 2, 3, 1)
        self.event: Any = None
        if pixels.is_cuda:
            self.host = torch.empty(pixels.shape, dtype=torch.uint8, pin_memory=True)
            self.host.copy_(pixels, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host = pixels.contiguous()

    def __len__(self) -> int:
        return int(self.host.shape[0])

    def numpy(self) -> Any:
        if self.event is not None:
            self.event.synchronize()
        return self.host.numpy()


class ModelTimer:
    """Seconds the device spends in pipeline calls: CUDA events around each call (read once, at the end:
    no wait per batch), or the wall clock on a CPU. ``measure`` waits and returns one call's seconds
    (for the batch size search)."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.pairs: list[tuple[Any, Any]] = []
        self.cpu_seconds = 0.0
        self._started: Any = None

    def start(self) -> None:
        if self.cuda:
            self._started = torch.cuda.Event(enable_timing=True)
            self._started.record()
        else:
            self._started = time.perf_counter()

    def stop(self, wait: bool = False) -> float | None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.pairs.append((self._started, end))
            if wait:
                end.synchronize()
                return self._started.elapsed_time(end) / 1000
            return None
        seconds = time.perf_counter() - self._started
        self.cpu_seconds += seconds
        return seconds

    def total(self) -> float:
        if self.cuda:
            if self.pairs:
                self.pairs[-1][1].synchronize()
            return self.cpu_seconds + sum(a.elapsed_time(b) for a, b in self.pairs) / 1000
        return self.cpu_seconds
