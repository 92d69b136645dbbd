"""Shared memory for image loaders: the one sizing rule the worker (how many batches its DataLoader workers
keep ready) and the operator (the size of the pod's /dev/shm volume) both use. Pure.

A DataLoader worker hands each batch to the main process through /dev/shm; images travel as uint8 (the
model's normalisation runs on the accelerator), so a batch of B images of side S takes B x 3 x S x S
bytes and W workers keeping P batches ready take W x P x that. ``resources.sharedMemory: auto`` sizes the
volume from the stage's batch size, the workers its CPU request gives and the model's input side, with
headroom; an explicit size is used as it is, and the worker then fits its prefetch to what it finds.
"""

from __future__ import annotations

import math
import re
from typing import Any

PREFETCH = 2  # batches each loader worker keeps ready
MAX_LOADER_WORKERS = 16
DEFAULT_IMAGE_SIDE = 224
HEADROOM = 64 * 2**20  # pin-memory threads, torch's own use
NO_LOADER_SHM = 256 * 2**20  # stages without image loaders (generation, prompts, reduce)
MiB = 2**20

_SUFFIXES = {
    "": 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
}
_QUANTITY = re.compile(r"^([0-9.]+)(m|k|M|G|T|P|Ki|Mi|Gi|Ti|Pi)?$")
_SIDE = re.compile(r"-(\d{3})(?:-|$)")


def parse_quantity(value: str) -> float:
    """A Kubernetes quantity (``4``, ``500m``, ``16Gi``, ``2e9``) as a number."""
    text = value.strip()
    match = _QUANTITY.match(text)
    if match is None:
        try:
            return float(text)  # exponent form
        except ValueError:
            raise ValueError(f"{value!r} is not a Kubernetes quantity") from None
    return float(match.group(1)) * _SUFFIXES[match.group(2) or ""]


def mebibytes(n: float) -> str:
    """``n`` bytes as a quantity in Mi, rounded up."""
    return f"{max(1, math.ceil(n / MiB))}Mi"


def loader_workers(cpus: float) -> int:
    """DataLoader workers for a pod with ``cpus`` CPUs: all but one (the main process feeds the
    accelerator), at most MAX_LOADER_WORKERS."""
    return max(0, min(int(cpus) - 1, MAX_LOADER_WORKERS))


def batch_bytes(batch: int, side: int, channels: int = 3) -> int:
    """One batch of uint8 images."""
    return batch * channels * side * side


def loader_shm_bytes(batch: int, workers: int, side: int, prefetch: int = PREFETCH) -> int:
    """What ``workers`` loader workers keeping ``prefetch`` batches ready hold in /dev/shm."""
    return workers * prefetch * batch_bytes(batch, side)


def fit_prefetch(batch: int, workers: int, side: int, available: int) -> tuple[int, int]:
    """(workers, prefetch) that fit ``available`` bytes of /dev/shm (half of it, leaving room for what
    else uses it): fewer batches ready first, then fewer workers; (0, 0) decodes in the main process."""
    batches = (available // 2) // max(1, batch_bytes(batch, side))  # batches that fit
    workers = min(workers, batches)
    if workers < 1:
        return 0, 0
    return workers, min(PREFETCH * 2, batches // workers)


def image_side(model: str) -> int:
    """The input side of an open_clip model, from the size its name carries (ViT-L-14-336, ...), else 224."""
    match = _SIDE.search(model.rsplit("/", 1)[-1])
    return int(match.group(1)) if match else DEFAULT_IMAGE_SIDE


def stage_shared_memory(spec: Any, stage: str) -> str | None:
    """The /dev/shm size of a stage's pods: ``resources.sharedMemory`` as written, or for ``auto`` the
    loaders' need (at most half the memory limit: the volume counts against it); None: no volume."""
    requested = spec.resources.shared_memory
    if requested is None or requested != "auto":
        return requested
    loader = _loader(spec, stage)
    if loader is None:
        need = NO_LOADER_SHM
    else:
        batch, model = loader
        workers = loader_workers(parse_quantity(spec.resources.cpu))
        need = loader_shm_bytes(batch, workers, image_side(model)) * 5 // 4 + HEADROOM
    cap = parse_quantity(spec.resources.memory) / 2
    return mebibytes(min(need, cap))


def _loader(spec: Any, stage: str) -> tuple[int, str] | None:
    """(batch size, image model) of the stage's image loader, or None when it has none."""
    if stage == "filter" and hasattr(spec, "filter"):
        return spec.filter.batch_size, spec.filter.clip.model
    if stage == "train" and hasattr(spec, "method"):
        return spec.method.classifier_tuning.feature_batch_size, spec.backbone.model
    return None
