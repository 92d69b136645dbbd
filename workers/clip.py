"""open_clip models for the filter and train stages: loading, the text-initialised zero-shot head, and
batched image features (images decoded as synthrec.workers.decode says, normalised on the device).

A model reference is an open_clip architecture name with a pretrained tag (``RN50`` + ``openai``; a tag of
None gives random weights), or a folder holding ``open_clip_config.json`` and the weights (``file://``,
``s3://``, ``hf://``, ``tiny://``), resolved with ``synthrec.workers.modelref.resolve_model`` and loaded with
open_clip's ``local-dir:`` schema. Built-in pretrained weights are cached under ``$SYNTHREC_CACHE``.

Images are preprocessed with the model's own validation transform (bicubic resize of the short side,
centre crop, CLIP mean/std), as the paper's CLIP Filter and Classifier Tuning do: resize and crop give uint8
batches, the mean and std are applied on the device (``ClipModel.pixels``). Image features are
L2-normalised; on CUDA they are computed under float16 autocast (the official code runs CLIP in fp16).

The zero-shot head (paper §1.7 "CT w. init"): for each class, every template is filled with the class's
head name, encoded, L2-normalised; the mean is L2-normalised again. Zero-shot logits are
``logit_scale * <image feature, class embedding>`` with the model's learned scale (100 for CLIP).

torch and open_clip are imported inside functions, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthrec.workers.decode import ImageDataset, Pixels, device_batches, image_loader, split_preprocess
from synthrec.workers.modelref import ModelRefError, default_cache_dir, fetch_failure, resolve_model
from synthrec.workers.runtime import ConfigError, Progress, worker_error

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# Small datasets are decoded in the main process: starting workers costs more than it saves.
MIN_ITEMS_FOR_WORKERS = 512


# ------------------------------------------------------------------------------------------ CPUs


def available_cpus() -> int:
    """CPUs this process may use: the cgroup CPU limit (a pod's ``cpu`` limit) if any, else the affinity
    mask. ``os.cpu_count()`` would report the whole node inside a container."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) // int(period))))
    return max(1, cpus)


def loader_workers(items: int) -> int:
    """DataLoader workers for ``items`` images: none for tiny sets, else all CPUs but one (the main
    process feeds the accelerator), at most 16: the rule the operator sizes /dev/shm with."""
    from synthrec.plan.shm import loader_workers as for_cpus

    if items < MIN_ITEMS_FOR_WORKERS:
        return 0
    return for_cpus(available_cpus())


def set_torch_threads() -> None:
    """Match torch's intra-op threads to the CPUs we may use (a pod sees the node's cores)."""
    import torch

    torch.set_num_threads(available_cpus())


# ----------------------------------------------------------------------------------------- model


@dataclass
class ClipModel:
    model: Any  # open_clip CLIP
    preprocess: Callable[[Any], Any]  # PIL image -> CHW float tensor (the model's own transform)
    tokenizer: Callable[[list[str]], Any]
    ref: str
    pretrained: str | None
    revision: str
    device: str
    pixels: Pixels = field(init=False)  # the same, split: uint8 on the CPU, normalised on the device

    def __post_init__(self) -> None:
        self.pixels = split_preprocess(self.preprocess)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp().item())

    @property
    def visual(self) -> Any:
        return self.model.visual

    def describe(self) -> dict[str, Any]:
        return {"model": self.ref, "pretrained": self.pretrained, "revision": self.revision}

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        import torch

        if self.device.startswith("cuda"):
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def text_head(
        self, class_names: Sequence[str], templates: Sequence[str], batch: int = 256
    ) -> torch.Tensor:
        """[C, D] float32: per class the renormalised mean of L2-normalised template embeddings."""
        import torch

        if not templates:
            raise ConfigError("the zero-shot head needs at least one template with {c}")
        texts = [t.replace("{c}", name) for name in class_names for t in templates]
        chunks = []
        with torch.inference_mode(), self.autocast():
            for start in range(0, len(texts), batch):
                tokens = self.tokenizer(texts[start : start + batch]).to(self.device)
                emb = self.model.encode_text(tokens).float()
                chunks.append(torch.nn.functional.normalize(emb, dim=-1))
        emb = torch.cat(chunks).view(len(class_names), len(templates), -1).mean(dim=1)
        return torch.nn.functional.normalize(emb, dim=-1)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """A batch as the model takes it, on its device: uint8 images normalised there, float ones moved."""
        import torch

        if images.dtype == torch.uint8:
            return self.pixels.normalize(images, self.device)
        return images.to(self.device, non_blocking=True)

    def encode(self, images: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
        """L2-normalised (or, with ``normalize=False``, raw) float32 features of a batch (uint8 from
        ``pixels``, or preprocessed floats); no gradients."""
        import torch

        with torch.inference_mode(), self.autocast():
            feats = self.model.encode_image(self.normalize(images)).float()
        return torch.nn.functional.normalize(feats, dim=-1) if normalize else feats

    def image_shape(self) -> tuple[int, ...]:
        return self.pixels.shape

    def dataset(
        self, items: Sequence[Any], read: Callable[[Any], bytes], decode: str = "full"
    ) -> ImageDataset:
        """The images ``items`` (read with ``read``) as this model takes them, decoded the ``decode`` way."""
        return ImageDataset(items, read, self.pixels, decode)


def load_clip(
    ref: str,
    pretrained: str | None,
    device: str,
    *,
    storage_opts: dict[str, Any] | None = None,
    cache_dir: Path | None = None,
    weights_from: str | None = None,
    revision: str | None = None,
) -> ClipModel:
    """Load an open_clip model in eval mode on ``device``; ConfigError for a reference that cannot load.

    ``weights_from``: a built-in architecture's pretrained weights as the model mirror copied them (a folder
    with the weights file and its tag's preprocessing, synthrec.workers.mirror); ``revision``: the pinned
    revision to report (the mirror's), instead of the one worked out here."""
    import open_clip

    try:
        resolved = resolve_model(
            weights_from or ref, allow_name=True, storage_opts=storage_opts, cache_dir=cache_dir
        )
    except ModelRefError as e:
        raise worker_error(e.failure, f"CLIP model: {e}") from e
    kwargs: dict[str, Any] = {}
    if weights_from is not None:
        assert resolved.path is not None
        info = json.loads((resolved.path / "open_clip_pretrained.json").read_text())
        name, tag = ref, pretrained
        revision = revision or f"open_clip:{name}:{tag or 'random'}"
        # the tag's preprocessing, as open_clip applies it when it downloads the tag itself
        kwargs = {f"image_{k}": info[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in info}
        kwargs["pretrained"] = str(resolved.path / info["file"])
    elif resolved.path is None:
        name, tag = resolved.name or ref, pretrained
        weights_cache = (cache_dir or default_cache_dir()) / "open_clip"
        revision = revision or f"open_clip:{name}:{tag or 'random'}"
        kwargs = {"pretrained": tag, "cache_dir": str(weights_cache)}
    else:
        if not (resolved.path / "open_clip_config.json").is_file():
            raise ConfigError(
                f"CLIP model {ref!r}: {resolved.path} has no open_clip_config.json; save the model with "
                "open_clip (config + weights), or give an open_clip architecture name"
            )
        name, tag = f"local-dir:{resolved.path}", None
        revision = revision or resolved.revision or folder_digest(resolved.path)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, **kwargs)
        tokenizer = open_clip.get_tokenizer(name)
    except (RuntimeError, ValueError, OSError, KeyError) as e:  # a download of named weights may fail too
        failure = fetch_failure(e) if isinstance(e, OSError) else "config"
        raise worker_error(
            failure, f"CLIP model {ref!r} (pretrained {pretrained!r}) cannot be loaded: {e}"
        ) from e
    model.eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    log.info("loaded CLIP %s (%s) on %s", ref, revision, device)
    builtin = resolved.path is None or weights_from is not None
    return ClipModel(model, preprocess, tokenizer, ref, pretrained if builtin else None, revision, device)


def folder_digest(path: Path) -> str:
    """sha256 over the relative paths and contents of a model folder: its revision when it has none."""
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


def zero_shot_logits(features: torch.Tensor, head: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale * cos(image, class)`` for L2-normalised features and head rows."""
    return scale * features.float() @ head.float().T


# ------------------------------------------------------------------------------------- image data


def encode_dataset(
    clip: ClipModel,
    dataset: ImageDataset,
    batch_size: int,
    progress: Progress | None = None,
    workers: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features [N, D] float32 (on CPU) and an ok mask [N] for every item of ``dataset``, in order."""
    import torch

    ok = torch.zeros(len(dataset), dtype=torch.bool)
    chunks: list[torch.Tensor] = []
    loader = image_loader(dataset, batch_size=batch_size, device=clip.device, workers=workers)
    for images, index, good in device_batches(loader, dataset, clip.device):
        chunks.append(clip.encode(images))  # stays on the device: no sync per batch
        ok[index] = good.cpu()
        if progress is not None:
            progress.advance(len(index))
    if not chunks:
        return torch.zeros((0, 0)), ok
    return torch.cat(chunks).cpu(), ok
